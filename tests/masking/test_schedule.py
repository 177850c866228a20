"""λ schedules and masking progress."""

from __future__ import annotations

import itertools
import math

import pytest

from semmae.errors import ConfigError
from semmae.masking.schedule import SCHEDULES, lambda_schedule, masking_progress

# name -> (λ(0), λ(0.5), λ(1)) at γ = 2
EXPECTED = {
    "power": (1.0, 0.75, 0.0),
    "intra": (1.0, 1.0, 1.0),
    "inter": (0.0, 0.0, 0.0),
    "linear": (1.0, 0.5, 0.0),
    "reversed": (0.0, 0.25, 1.0),
    "cosine": (1.0, 0.5, 0.0),
}
# +1 non-increasing, -1 non-decreasing, 0 constant
DIRECTION = {"power": 1, "intra": 0, "inter": 0, "linear": 1, "reversed": -1, "cosine": 1}


def test_expected_covers_every_schedule() -> None:
    assert set(EXPECTED) == set(SCHEDULES)


@pytest.mark.parametrize("name", SCHEDULES)
def test_known_values(name: str) -> None:
    lam = lambda_schedule(name, gamma=2.0)
    for p, want in zip((0.0, 0.5, 1.0), EXPECTED[name], strict=True):
        assert lam(p) == pytest.approx(want, abs=1e-12)


def test_gamma() -> None:
    assert lambda_schedule("power", gamma=3.0)(0.5) == pytest.approx(1 - 0.125)
    assert lambda_schedule("reversed", gamma=1.0)(0.3) == pytest.approx(0.3)
    assert lambda_schedule("power", gamma=1.0)(0.3) == pytest.approx(lambda_schedule("linear")(0.3))
    assert lambda_schedule("cosine")(0.25) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))


@pytest.mark.parametrize("name", SCHEDULES)
def test_monotone_and_in_range(name: str) -> None:
    lam = lambda_schedule(name)
    values = [lam(i / 100) for i in range(101)]
    assert all(0.0 <= v <= 1.0 for v in values)
    diffs = [b - a for a, b in itertools.pairwise(values)]
    sign = DIRECTION[name]
    if sign == 0:
        assert all(d == 0 for d in diffs)
    else:
        assert all(sign * d <= 0 for d in diffs) and sign * (values[-1] - values[0]) < 0


@pytest.mark.parametrize("name", SCHEDULES)
def test_progress_is_clamped(name: str) -> None:
    lam = lambda_schedule(name)
    assert lam(-0.5) == lam(0.0) and lam(1.7) == lam(1.0)


def test_bad_schedule_arguments() -> None:
    with pytest.raises(ConfigError, match="zigzag"):
        lambda_schedule("zigzag")
    with pytest.raises(ConfigError, match="gamma"):
        lambda_schedule("power", gamma=0.0)


def test_progress_per_step() -> None:
    assert masking_progress(0, 100, 10) == 0.0
    assert masking_progress(25, 100, 10) == 0.25
    assert masking_progress(99, 100, 10) == pytest.approx(0.99)
    assert masking_progress(150, 100, 10) == 1.0


def test_progress_per_epoch_is_quantised() -> None:
    # 4 epochs of 10 steps: λ changes only at epoch starts, p = epoch / num_epochs
    values = [masking_progress(s, 40, 10, per="epoch") for s in range(40)]
    assert values[:10] == [0.0] * 10
    assert values[10:20] == [0.25] * 10
    assert values[30:] == [0.75] * 10
    assert len(set(values)) == 4
    # agrees with per-step progress at every epoch start
    for s in range(0, 40, 10):
        assert values[s] == masking_progress(s, 40, 10, per="step")
    # a partial last epoch still counts as an epoch: 25 steps of 10 -> 3 epochs
    assert masking_progress(20, 25, 10, per="epoch") == pytest.approx(2 / 3)


def test_bad_progress_arguments() -> None:
    with pytest.raises(ConfigError, match="step_per"):
        masking_progress(0, 10, 5, per="batch")
    with pytest.raises(ConfigError):
        masking_progress(0, 0, 5)
    with pytest.raises(ConfigError):
        masking_progress(0, 10, 0)
