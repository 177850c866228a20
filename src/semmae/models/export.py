"""Export a :class:`~semmae.models.encoder.ViTEncoder` to timm (safetensors) or ONNX.

The timm export is a ``VisionTransformer`` state dict (our names are timm's) in a ``.safetensors``
file whose metadata holds the constructor arguments as JSON (``timm_kwargs``) and the input
normalisation (``mean``, ``std``). Loading it in timm takes three lines::

    import json, timm; from safetensors import safe_open; from safetensors.torch import load_file
    kwargs = json.loads(safe_open("encoder.safetensors", "pt").metadata()["timm_kwargs"])
    model = timm.models.VisionTransformer(**kwargs); model.load_state_dict(load_file("encoder.safetensors"))

``model.forward_features(x)`` then returns our ``forward_features(x)`` (B, 1 + L, D): timm's default
``no_embed_class=False`` adds ``pos_embed`` (1, 1 + L, D) after concatenating the CLS token, which is
the same sum as ours; its ``layernorm`` is LayerNorm with eps 1e-6, as ours. The ONNX export runs
``forward_features`` with a dynamic batch axis (input ``images``, output ``tokens``).
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from semmae import __version__
from semmae.atomic import FILE_MODE, atomic_path, remove_stale_temps_of, scratch_dir_for
from semmae.encoder_spec import check_export_target
from semmae.models.encoder import ViTEncoder, load_encoder

log = logging.getLogger(__name__)


def timm_vit_kwargs(encoder: ViTEncoder) -> dict[str, Any]:
    """JSON-serialisable ``timm.models.VisionTransformer`` arguments that compute our features.

    ``norm_layer="layernorm"`` is timm's LayerNorm (eps 1e-6); ``global_pool="token"`` with
    ``num_classes=0`` keeps the final token norm and no head, so the state dicts match one-to-one.
    """
    return dict(
        **encoder.arch,
        qkv_bias=True,
        class_token=True,
        no_embed_class=False,
        global_pool="token",
        num_classes=0,
        norm_layer="layernorm",
    )


def encoder_to_timm_state_dict(encoder: ViTEncoder) -> dict[str, torch.Tensor]:
    """The encoder's weights under timm ``VisionTransformer`` names (identical to ours), on CPU."""
    return {k: v.detach().to("cpu").clone().contiguous() for k, v in encoder.state_dict().items()}


def export_timm(encoder: ViTEncoder, path: str | Path, *, metadata: dict[str, Any] | None = None) -> Path:
    """Write the timm state dict and its constructor arguments to a ``.safetensors`` file.

    Args:
        encoder: the encoder to export.
        path: output file.
        metadata: extra JSON-serialisable entries (e.g. ``mean``, ``std``, ``source``).

    Returns:
        The written path.
    """
    from safetensors.torch import save_file

    meta = {
        "format": "semmae-timm-vit",
        "semmae_version": __version__,
        "timm_kwargs": json.dumps(timm_vit_kwargs(encoder)),
    }
    meta.update({k: json.dumps(v) for k, v in (metadata or {}).items()})
    path = Path(path)
    remove_stale_temps_of(path, path.suffix)  # left by a killed export of the same file
    with atomic_path(path, suffix=path.suffix) as tmp, scratch_dir_for(path) as scratch:
        # save_file streams the tensors to disk (save() would hold a second copy in memory), but
        # through a ".tmp<6 random characters>" file of its own beside its target, which a killed
        # export would leave (343 MB for ViT-B): in a scratch folder, the next export removes it.
        save_file(encoder_to_timm_state_dict(encoder), str(scratch / path.name), metadata=meta)
        os.replace(scratch / path.name, tmp)
        os.chmod(tmp, FILE_MODE)  # safetensors makes its file private (0600)
    return path


def export_onnx(encoder: ViTEncoder, path: str | Path, opset: int = 17) -> Path:
    """Export ``forward_features`` (images (B, C, S, S) -> tokens (B, 1 + L, D)) to ONNX.

    Uses the TorchScript-based exporter (``dynamo=False``): it needs no ``onnxscript`` and handles
    the fused attention at opset >= 14. The file is checked with ``onnx.checker``.
    """
    import onnx

    path = Path(path)
    example = torch.zeros(
        2, encoder.in_chans, encoder.img_size, encoder.img_size, device=next(encoder.parameters()).device
    )
    remove_stale_temps_of(path, path.suffix)  # left by a killed export of the same file
    with atomic_path(path, suffix=path.suffix) as tmp, torch.no_grad(), warnings.catch_warnings():
        # the shape check in forward_features is a trace-time constant, as intended; the legacy
        # exporter is chosen on purpose (the dynamo one needs onnxscript), so its notice is noise
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            encoder.eval(),  # its forward is forward_features
            (example,),
            str(tmp),
            input_names=["images"],
            output_names=["tokens"],
            dynamic_axes={"images": {0: "batch"}, "tokens": {0: "batch"}},
            opset_version=opset,
            dynamo=False,
        )
        onnx.checker.check_model(str(tmp))
    return path


@torch.no_grad()
def export_max_abs_diff(encoder: ViTEncoder, path: str | Path, fmt: str) -> float | None:
    """Max |exported - ours| of ``forward_features`` on two fixed random images (None if untestable)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, encoder.in_chans, encoder.img_size, encoder.img_size, generator=gen)
    ref = encoder.eval().forward_features(x.to(next(encoder.parameters()).device)).float().cpu()
    if fmt == "timm":
        from safetensors import safe_open
        from safetensors.torch import load_file
        from timm.models.vision_transformer import VisionTransformer

        with safe_open(str(path), "pt") as f:
            kwargs = json.loads(f.metadata()["timm_kwargs"])
        model = VisionTransformer(**kwargs).eval()
        model.load_state_dict(load_file(str(path)))
        return float((model.forward_features(x) - ref).abs().max())
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = sess.run(["tokens"], {"images": x.numpy()})[0]
    return float((torch.from_numpy(out) - ref).abs().max())


def run_export(
    spec: str, fmt: str, out: str | Path, *, overwrite: bool = False, verify: bool = True
) -> dict[str, Any]:
    """Load the encoder of ``spec`` and export it to ``out``.

    Args:
        spec: anything :func:`~semmae.models.encoder.load_encoder` accepts.
        fmt: ``timm`` or ``onnx``.
        out: output file; an existing one is refused unless ``overwrite``.
        verify: reload the export and compare its features with ours.

    Returns:
        ``{"format", "out", "source", "bytes", "max_abs_diff"}``.

    Raises:
        ConfigError: unknown format. RunDirError: ``out`` is refused (:func:`check_export_target`).
        CheckpointError: bad ``spec``.
    """
    out = Path(out)
    check_export_target(fmt, out, overwrite=overwrite)
    encoder, meta = load_encoder(spec)
    extra = {"mean": meta["mean"], "std": meta["std"], "source": meta["source"], "data": meta.get("data")}
    if fmt == "timm":
        export_timm(encoder, out, metadata=extra)
    else:  # an ONNX graph has no place for the metadata
        export_onnx(encoder, out)
    diff = export_max_abs_diff(encoder, out, fmt) if verify else None
    if diff is not None:
        log.info("export %s: max |exported - ours| on random images = %.2e", fmt, diff)
    return {"format": fmt, "out": str(out), "source": spec, "bytes": out.stat().st_size, "max_abs_diff": diff}
