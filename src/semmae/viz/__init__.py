"""Visual reports: reconstructions, mask and part overlays, training plots.

Only the plotting modules import matplotlib (pyplot); the tensor-based overlays here
(:mod:`semmae.viz.masks`) need only torch and torchvision.
"""
