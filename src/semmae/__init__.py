"""semmae: semantic-guided masked image modeling (SemMAE, Li et al., NeurIPS 2022) and baselines."""

__version__ = "0.1.0"
