"""Stage 1 of SemMAE: semantic part learning on a frozen ViT (DESIGN.md §2.2).

The only thing stage 2 needs from here is a part-label map per image, exported by
:func:`semmae.parts.export.export_part_maps` (or oracle maps from ground-truth masks).
"""

from semmae.parts.backbone import FrozenBackbone, load_backbone
from semmae.parts.labels import maps_to_labels
from semmae.parts.learner import PartLearner, PartOutput
from semmae.parts.losses import count_empty_parts, part_area_histogram, parts_loss

__all__ = [
    "FrozenBackbone",
    "PartLearner",
    "PartOutput",
    "count_empty_parts",
    "load_backbone",
    "maps_to_labels",
    "part_area_histogram",
    "parts_loss",
]
