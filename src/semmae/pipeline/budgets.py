"""The budgets of ``semmae study``: overrides that size one study recipe for the time at hand.

``full`` is the config as written; ``quick`` (:data:`QUICK`) a smoke run in minutes; ``gpu``
(:func:`budget_overrides`) the same study with more data, epochs and seeds, sized for one
H100/H200-class GPU in about 10 minutes. No torch: the command resolves its config before it loads
heavy libraries.
"""

from __future__ import annotations

from typing import get_args

from semmae.config import Config
from semmae.errors import ConfigError
from semmae.names import StudyBudget

BUDGETS = get_args(StudyBudget)
# The quick budget: a smoke run of the whole study in minutes.
QUICK = [
    "data.limit=1500", "train.epochs=1", "parts.epochs=1", "eval.linear_epochs=10",
    "pipeline.seeds=[0]", "train.knn_every_epochs=-1", "train.image_every_epochs=0",
]  # fmt: skip
# The gpu budget, sized by arithmetic (README, "Masking study"): 4x the images of a synthetic set,
# 2.5x the epochs, batch 256, 5 seeds, bf16 autocast on the accelerator.
GPU_SCALE = {"toy_size": 4, "epochs": 2.5}
GPU = [
    "pipeline.seeds=[0,1,2,3,4]", "train.batch_size=256", "parts.batch_size=256", "train.precision=bf16",
    "train.device=cuda", "eval.batch_size=1024",
]  # fmt: skip
PART_MASK_SETS = ("toy_parts", "toy_relations")  # data sets with ground-truth part masks


def budget_overrides(budget: str, cfg: Config) -> list[str]:
    """Overrides applied before the user's: none for ``full``, :data:`QUICK`, or :data:`GPU` scaled from ``cfg``.

    Raises:
        ConfigError: an unknown budget.
    """
    if budget not in BUDGETS:
        raise ConfigError(f"study budget must be one of {', '.join(BUDGETS)}, got {budget!r}")
    if budget == "quick":
        return list(QUICK)
    if budget == "full":
        return []
    epochs = max(1, round(cfg.train.epochs * GPU_SCALE["epochs"]))
    out = list(GPU) + [f"train.epochs={epochs}"]
    if cfg.data.name in PART_MASK_SETS:
        out.append(f"data.toy_size={cfg.data.toy_size * GPU_SCALE['toy_size']}")
    return out
