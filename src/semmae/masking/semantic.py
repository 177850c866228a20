"""SemMAE's semantic-guided masking (Li et al., NeurIPS 2022, arXiv 2206.10207), DESIGN.md §2.3.

Per image, with part labels s (L,) in {0..K-1}, part sizes n_k, ratio r and weight λ:

1. intra-part counts a_k = round(r·n_k);
2. inter-part counts: walk a random order of the parts with budget R = r·L;
   b_k = min(n_k, max(0, floor(R − size of the parts before k))): whole parts are hidden until the
   budget runs out, the part crossing it partly, the rest not at all;
3. m_k = round(λ·a_k + (1 − λ)·b_k);
4. m_k patches of part k, chosen uniformly at random, are *designated*;
5. exactly n_mask = L − int(L·(1 − r)) patches are hidden: designated ones first, then random
   other ones if there are fewer, or a random subset of the designated ones if there are more.

Rounding: ``round`` is :func:`torch.round`, i.e. round half to even (2.5 → 2, 3.5 → 4), which is
also what Python's built-in ``round`` (used by the paper's code) does. Counts are computed in
float64 so that they equal the same formula evaluated with Python floats.

Randomness, all from the supplied generator, drawn in this order: the part order (B, K), the
within-part ranks (B, L), the tie-break/fill noise (B, L). Draws are int64 keys from
``torch.randint`` on the generator's device, moved to the device of the part labels, so a seed gives
the same mask on every device and sort ties (probability ~2⁻⁵⁴ per pair) never decide anything.
Everything is vectorised over the batch and the parts: no Python loop.
"""

from __future__ import annotations

import torch

from semmae.masking.base import MaskOutput, mask_budget, mask_from_scores
from semmae.masking.schedule import lambda_schedule
from semmae.registry import MASKINGS
from semmae.runtime import to_device

_KEY_BITS = 54  # random key width; labels (< 2**8) go in the bits above it, all within int64
_COUNT_DTYPE = torch.float64


def _random_keys(
    batch_size: int, width: int, generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """(B, width) int64 keys uniform in [0, 2**54), drawn on the generator's device, then moved."""
    gen_device = generator.device if generator is not None else torch.device("cpu")
    keys = torch.randint(0, 2**_KEY_BITS, (batch_size, width), generator=generator, device=gen_device)
    return to_device(keys, torch.device(device))  # pinned, non-blocking on CUDA: no host sync


def part_sizes(part_labels: torch.Tensor, num_parts: int) -> torch.Tensor:
    """Patches per part, n_k.

    Args:
        part_labels: (B, L) int64 labels in {0..K-1}.
        num_parts: K.

    Returns:
        (B, K) int64 counts; each row sums to L.
    """
    n = torch.zeros(part_labels.shape[0], num_parts, dtype=torch.int64, device=part_labels.device)
    return n.scatter_add_(1, part_labels, torch.ones_like(part_labels))


def part_order(
    batch_size: int, num_parts: int, generator: torch.Generator | None, device: torch.device | str
) -> torch.Tensor:
    """A uniformly random order of the K parts per image (the first draw of the strategy).

    Returns:
        (B, K) int64; ``order[b, j]`` is the part visited j-th in image b.
    """
    return torch.argsort(_random_keys(batch_size, num_parts, generator, torch.device(device)), dim=1)


def semantic_counts(
    part_labels: torch.Tensor,
    num_parts: int,
    ratio: float,
    lam: float,
    generator: torch.Generator | None = None,
    *,
    order: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Steps 1–3 of §2.3: how many patches of each part to designate.

    Args:
        part_labels: (B, L) int64 labels in {0..K-1} (not re-validated here).
        num_parts: K.
        ratio: r in (0, 1).
        lam: λ in [0, 1]; 1 = intra-part, 0 = inter-part.
        generator: draws the part order via :func:`part_order` when ``order`` is None.
        order: (B, K) int64 part order to use instead of drawing one (tests, ablations).

    Returns:
        ``(n_k, a_k, b_k, m_k)``, each (B, K) int64 on the device of ``part_labels``: part sizes,
        intra-part counts, inter-part counts and the mixed counts; ``0 <= m_k <= n_k``.
    """
    bsz, length = part_labels.shape
    dev = part_labels.device
    n = part_sizes(part_labels, num_parts)
    nf = n.to(_COUNT_DTYPE)
    a = torch.round(ratio * nf)
    if order is None:
        order = part_order(bsz, num_parts, generator, dev)
    order = order.to(dev)
    n_ordered = torch.gather(nf, 1, order)
    before = torch.cumsum(n_ordered, dim=1) - n_ordered  # sizes of the parts earlier in the order
    budget = ratio * length
    b_ordered = torch.minimum(n_ordered, torch.floor(budget - before).clamp(min=0.0))
    b = torch.empty_like(b_ordered).scatter_(1, order, b_ordered)
    # Two products and a sum, as in the formula, so the value equals the Python-float one bit for bit.
    m = torch.round(lam * a + (1.0 - lam) * b)
    return n, a.to(torch.int64), b.to(torch.int64), m.to(torch.int64)


def designate_patches(
    part_labels: torch.Tensor, counts: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Step 4 of §2.3: choose ``counts[b, k]`` patches of part k uniformly at random.

    Each patch gets a random key; sorting by (part, key) lists every part's patches in random
    order, and a patch is designated when its rank within its part is below the part's count.

    Args:
        part_labels: (B, L) int64 labels in {0..K-1}.
        counts: (B, K) int64, 0 <= counts <= part sizes.
        generator: draws the (B, L) keys.

    Returns:
        (B, L) bool, True = designated; exactly ``counts[b, k]`` True among part k of row b.
    """
    bsz, length = part_labels.shape
    dev = part_labels.device
    keys = _random_keys(bsz, length, generator, dev)
    order = torch.argsort((part_labels << _KEY_BITS) | keys, dim=1)
    sorted_labels = torch.gather(part_labels, 1, order)
    n = part_sizes(part_labels, counts.shape[1])
    start = torch.cumsum(n, dim=1) - n  # first sorted position of every part
    position = torch.arange(length, device=dev).expand(bsz, length)
    rank = position - torch.gather(start, 1, sorted_labels)
    chosen = rank < torch.gather(counts, 1, sorted_labels)
    return torch.empty_like(chosen).scatter_(1, order, chosen)


def _check_labels(
    part_labels: torch.Tensor | None, num_parts: int | None, batch_size: int, num_patches: int
) -> torch.Tensor:
    if part_labels is None or num_parts is None:
        raise ValueError("semantic masking needs part_labels (B, L) and num_parts; load a part-map file")
    if num_parts < 1 or num_parts > 2**8:
        raise ValueError(f"semantic masking supports 1 <= num_parts <= 256, got {num_parts}")
    if tuple(part_labels.shape) != (batch_size, num_patches):
        raise ValueError(
            f"part_labels must have shape ({batch_size}, {num_patches}), got {tuple(part_labels.shape)}"
        )
    if part_labels.dtype.is_floating_point or part_labels.dtype == torch.bool:
        raise ValueError(f"part_labels must be an integer tensor, got {part_labels.dtype}")
    return part_labels.long()


class SemanticMasking:
    """SemMAE masking: from intra-part to inter-part masking over training (DESIGN.md §2.3).

    Args:
        ratio: r, share of patches hidden, in (0, 1).
        schedule: λ schedule name (see :func:`semmae.masking.schedule.lambda_schedule`).
        gamma: exponent of the ``power``/``reversed`` schedules.
        check_labels: verify 0 <= labels < K on every call; on an accelerator this costs one
            host sync per call, so a caller that validated its labels once may turn it off.
    """

    requires_parts = True

    def __init__(
        self, ratio: float = 0.75, schedule: str = "power", gamma: float = 2.0, check_labels: bool = True
    ) -> None:
        mask_budget(16, ratio)  # validates the ratio early
        self.ratio = ratio
        self.schedule = schedule
        self.gamma = gamma
        self.check_labels = check_labels
        self._lam = lambda_schedule(schedule, gamma)

    def lam(self, progress: float) -> float:
        """λ at training progress ``progress`` in [0, 1]."""
        return self._lam(progress)

    def __call__(
        self,
        batch_size: int,
        num_patches: int,
        *,
        part_labels: torch.Tensor | None = None,
        num_parts: int | None = None,
        progress: float = 0.0,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> MaskOutput:
        """See :class:`semmae.masking.base.MaskingStrategy`.

        Args:
            part_labels: (B, L) integer part labels in {0..K-1}, required.
            num_parts: K, required.
            progress: training progress p in [0, 1]; λ = schedule(p).
            device: where the output lives; default the device of ``part_labels``.

        Raises:
            ValueError: without part labels or K, with a wrong shape, or labels outside {0..K-1}.
        """
        labels = _check_labels(part_labels, num_parts, batch_size, num_patches)
        assert num_parts is not None  # narrowed by _check_labels
        if device is not None:
            labels = labels.to(device)
        if self.check_labels and labels.numel() and bool(((labels < 0) | (labels >= num_parts)).any()):
            lo, hi = int(labels.min()), int(labels.max())
            raise ValueError(f"part labels must lie in [0, {num_parts - 1}], got values in [{lo}, {hi}]")
        _, n_mask = mask_budget(num_patches, self.ratio)
        _, _, _, m = semantic_counts(labels, num_parts, self.ratio, self.lam(progress), generator)
        designated = designate_patches(labels, m, generator)
        # Designated patches outrank all others; the random key picks within each group.
        noise = _random_keys(batch_size, num_patches, generator, labels.device)
        scores = (designated.long() << _KEY_BITS) | noise
        return mask_from_scores(scores, n_mask)


MASKINGS.register("semantic")(SemanticMasking)

__all__ = ["SemanticMasking", "designate_patches", "part_order", "part_sizes", "semantic_counts"]
