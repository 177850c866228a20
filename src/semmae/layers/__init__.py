"""Tensor plumbing shared by models: patches, token gathers, position embeddings."""

from semmae.layers.patches import patchify, unpatchify
from semmae.layers.pos_embed import sincos_pos_embed_2d
from semmae.layers.tokens import gather_tokens, unshuffle_tokens

__all__ = ["gather_tokens", "patchify", "sincos_pos_embed_2d", "unpatchify", "unshuffle_tokens"]
