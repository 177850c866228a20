"""Models: the MAE (pretraining) and its presets."""

from semmae.models.mae import MAEOutput, MaskedAutoencoderViT
from semmae.models.presets import build_mae, preset

__all__ = ["MAEOutput", "MaskedAutoencoderViT", "build_mae", "preset"]
