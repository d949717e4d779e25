"""ONNX export of an amanita model, and the check that onnxruntime computes what PyTorch does.

The exported graph takes ``image``: a float batch ``(batch, 3, H, W)`` already resized and
normalised as the data config says (``create_transforms(cfg, train=False)`` then
``amanita.data.to_model_input``), and returns one logits output per head, named after the head. Beside it the bundle
holds the data config and the taxonomy, so an app can preprocess and name classes without
amanita or PyTorch.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from amanita.io import UserError, atomic_write_stream, atomic_write_text, import_optional
from amanita.taxonomy import Taxonomy

INPUT_NAME = "image"
INSTALL_HINT = "pip install onnx==1.23.2 onnxscript==0.7.2 onnxruntime==1.32.0"


def require(module: str):
    """Import one of the export's optional dependencies (a :class:`UserError` says how to install it)."""
    return import_optional(module, "ONNX export", INSTALL_HINT + " (or pip install -r requirements-test.txt)")


class _ExportHeads(nn.ModuleDict):
    """The heads under attribute-safe names, looked up by their own.

    ``class`` is a Python keyword, and torch.fx writes parameter paths as attributes
    (``self.model.heads.class.weight``), which does not compile; the names seen by the
    model's ``forward`` (``items()``, ``[rank]``) stay the ranks.
    """

    def __init__(self, heads: nn.ModuleDict):
        super().__init__({f"head_{k}": v for k, v in heads.items()})

    def items(self):
        return [(k.removeprefix("head_"), v) for k, v in super().items()]

    def __getitem__(self, key: str) -> nn.Module:
        return super().__getitem__(f"head_{key}")


def exportable(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (eval, CPU) that torch.export can trace.

    Heads under safe names (see :class:`_ExportHeads`), and timm's attention written out
    instead of ``scaled_dot_product_attention``: the ONNX decomposition of SDPA leaves strides
    that BEiT's following ``reshape`` cannot view (torch 2.14, "Cannot view a tensor").
    """
    import copy
    model = copy.deepcopy(model).eval().cpu()
    for module in model.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = False
    if isinstance(getattr(model, "heads", None), nn.ModuleDict):
        model.heads = _ExportHeads(model.heads)
    return model


class HeadTuple(nn.Module):
    """``model`` with its ``{head: logits}`` dict returned as a tuple in ``names`` order (ONNX outputs)."""

    def __init__(self, model: nn.Module, names: list[str]):
        super().__init__()
        self.model, self.names = model, list(names)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(image)
        return tuple(out[n].float() for n in self.names)


def output_sizes(model: nn.Module, input_size) -> dict[str, int]:
    """``{head: classes}`` of the model's outputs, in its own order (coarse ranks first, the leaf last)."""
    with torch.no_grad():
        return {k: int(v.shape[1]) for k, v in model.eval()(torch.zeros(2, *input_size)).items()}


def export_onnx(model: nn.Module, data_config: dict, path: str | os.PathLike, opset: int = 18) -> list[str]:
    """Write ``model`` (eval mode, CPU) as one self-contained ONNX file; returns its output names.

    torch's ``torch.export``-based exporter, with a dynamic batch axis. The file is written
    atomically; the data config and output names are also stored in its metadata.
    """
    onnx = require("onnx")
    require("onnxscript")
    model = exportable(model)
    input_size = tuple(data_config["input_size"])
    names = list(output_sizes(model, input_size))
    example = torch.randn(2, *input_size)
    tmp = Path(path).with_name(f".{Path(path).name}.export")
    try:
        torch.onnx.export(HeadTuple(model, names).eval(), (example,), str(tmp), input_names=[INPUT_NAME],
                          output_names=names, opset_version=opset, dynamo=True, external_data=False,
                          dynamic_shapes={"image": {0: torch.export.Dim.DYNAMIC}}, verbose=False)
        proto = onnx.load(str(tmp))
    finally:
        tmp.unlink(missing_ok=True)
    meta = {"amanita_data_config": json.dumps(_plain(data_config)), "amanita_outputs": json.dumps(names)}
    for key, value in meta.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(proto)
    data = proto.SerializeToString()
    atomic_write_stream(path, lambda f: f.write(data))
    return names


def _plain(d: dict) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


def write_bundle(out_dir: str | os.PathLike, model: nn.Module, taxonomy: Taxonomy, data_config: dict,
                 info: dict, opset: int = 18) -> dict:
    """``model.onnx``, ``model.json`` (data config, outputs, provenance) and ``taxonomic_mappings.json``.

    Returns the ``model.json`` record.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = export_onnx(model, data_config, out / "model.onnx", opset)
    sizes = output_sizes(model, data_config["input_size"])
    record = {"onnx": "model.onnx", "input": INPUT_NAME, "input_layout": "NCHW float32, resized and normalised",
              "outputs": names, "output_sizes": sizes, "data_config": _plain(data_config),
              "taxonomy": "taxonomic_mappings.json", "taxonomy_sha256": taxonomy.sha256(),
              "checkpoint": info.get("path"), "architecture": info.get("architecture"),
              "epoch": info.get("epoch"), "git_sha": info.get("git_sha"), "opset": opset,
              "created": time.strftime("%Y-%m-%d %H:%M:%S")}
    taxonomy.save(out / "taxonomic_mappings.json")
    atomic_write_text(out / "model.json", json.dumps(record, indent=1))
    return record


def onnx_session(path: str | os.PathLike, threads: int = 1):
    """An onnxruntime CPU session with ``threads`` intra-op threads (1: the phone-like setting)."""
    ort = require("onnxruntime")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def compare_outputs(model: nn.Module, session, images: torch.Tensor) -> dict[str, float]:
    """Largest absolute difference per output between PyTorch and onnxruntime on ``images``."""
    with torch.no_grad():
        ref = {k: v.float().numpy() for k, v in model.eval()(images).items()}
    names = [o.name for o in session.get_outputs()]
    got = session.run(names, {INPUT_NAME: images.numpy().astype(np.float32)})
    return {n: float(np.abs(ref[n] - g).max()) for n, g in zip(names, got)}


def check_export(model: nn.Module, onnx_path: str | os.PathLike, images: torch.Tensor,
                 atol: float = 1e-3) -> dict[str, float]:
    """Run the exported file with onnxruntime on ``images``; a :class:`UserError` past ``atol``."""
    diffs = compare_outputs(model, onnx_session(onnx_path), images)
    bad = {k: v for k, v in diffs.items() if not v <= atol}
    if bad:
        raise UserError(f"{onnx_path}: onnxruntime differs from PyTorch by more than {atol}: {bad}")
    return diffs
