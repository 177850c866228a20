"""Stage 1 of SemMAE: semantic part learning on a frozen ViT (DESIGN.md §2.2).

The only thing stage 2 needs from here is a part-label map per image, exported by
:func:`semmae.parts.export.export_part_maps` (or oracle maps from ground-truth masks).
"""
