"""``export.json``: what an export holds and where it came from.

The sidecar records the generator (method, m, r, T, d, h), the instance encoder and its
tokenizer settings (:func:`write_tokenizer`), the frozen model's identity and embedding
hash (the model host refuses another model), the task, the ONNX signature and opset,
every file's size and SHA-256 (:func:`file_entry`), the provenance (``source``), the
parity figures and the package versions. :func:`export.runtime.read_sidecar` reads it.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any

from lopa_fed.encoder import InstanceEncoder
from lopa_fed.model import PromptedModel
from lopa_fed.provenance import package_versions
from lopa_fed.tasks import get_task

from .errors import ExportError
from .runtime import FORMAT, INPUT_NAMES, OUTPUT_NAME, SIDECAR, TOKENIZER_FILE, sha256_file

__all__ = ["describe", "file_entry", "summarize", "versions", "write_sidecar", "write_tokenizer"]

#: Packages whose versions every export records.
VERSIONED = ("torch", "transformers", "onnx", "onnxscript", "onnxruntime", "tokenizers", "lopa-fed")


def versions() -> dict[str, str | None]:
    """Versions of Python and of :data:`VERSIONED` (``None`` when not installed)."""
    return package_versions(VERSIONED)


def file_entry(path: Path) -> dict[str, Any]:
    """``{"bytes", "sha256"}`` of a file."""
    return {"bytes": path.stat().st_size, "sha256": sha256_file(path)}


def write_tokenizer(encoder: InstanceEncoder, stage: Path) -> dict[str, Any]:
    """Write the encoder's tokenizer (exactly the backend the PyTorch path uses) and describe its settings.

    Raises
    ------
    ExportError
        The tokenizer has no fast (``tokenizers``) backend, which the torch-free runtime needs.
    """
    tok = encoder.tokenizer
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        raise ExportError(
            f"encoder {encoder.identity}: tokenizer {type(tok).__name__} has no fast (tokenizers) "
            "backend, which the torch-free runtime needs"
        )
    path = stage / TOKENIZER_FILE
    backend.save(str(path))
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    return {
        "file": TOKENIZER_FILE,
        "sha256": sha256_file(path),
        "identity": encoder.identity,
        "class": type(tok).__name__,
        "max_length": int(encoder.max_length),
        "truncation": "longest_first",
        "padding": "longest",
        "pad_id": int(pad_id),
        "pad_token": str(tok.pad_token),
        "pad_type_id": int(getattr(tok, "pad_token_type_id", 0) or 0),
    }


def describe(
    model: PromptedModel,
    *,
    files: dict[str, Any],
    tokenizer: dict[str, Any] | None,
    opset: int,
    task: str | None,
    frozen_max_length: int,
    source: dict[str, Any] | None,
) -> dict[str, Any]:
    """The ``export.json`` content of an export of ``model`` (without parity figures).

    Parameters
    ----------
    model : PromptedModel
        The exported model (it has a prompt generator).
    files : dict
        ``{file name: file_entry(...)}`` of the files written so far.
    tokenizer : dict, optional
        :func:`write_tokenizer`'s description (``None`` for PT).
    opset : int
        The opset the ONNX file declares.
    task : str, optional
        Task name the model host encodes text for.
    frozen_max_length : int
        Token limit of the frozen model's input on the host.
    source : dict, optional
        Provenance (checkpoint or federated run, hashes).
    """
    cfg, gen = model.config, model.prompt
    return {
        "format": FORMAT,
        "method": cfg.method,
        "m": cfg.m,
        "r": cfg.r if cfg.method.startswith("lopa") else None,
        "hidden": cfg.hidden if cfg.method != "pt" else None,
        "num_tokens": cfg.num_tokens,
        "d": int(gen.d),
        "h": int(gen.h) if gen.uses_features else None,
        "uses_features": bool(gen.uses_features),
        "lopa": cfg.to_dict(),
        "encoder": _encoder_meta(model.encoder) if gen.uses_features else None,
        "tokenizer": tokenizer,
        "frozen_model": {
            "identity": model.frozen.identity,
            "kind": model.frozen.kind,
            "d": model.frozen.d,
            "embedding_sha256": model.frozen.embedding_hash(),
        },
        "frozen_max_length": int(frozen_max_length),
        "task": task,
        "num_labels": model.num_labels,
        "label_words": list(model.label_words) or (list(get_task(task).label_words) if task else []),
        "onnx": _onnx_meta(opset, cfg.num_tokens, int(gen.d)),
        "files": files,
        "source": source or {},
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(),
    }


def _encoder_meta(enc: InstanceEncoder) -> dict[str, Any]:
    return {
        "identity": enc.identity,
        "hidden_size": enc.hidden_size,
        "pooling": enc.net.pooler.mode,
        "normalize": bool(enc.net.pooler.normalize),
        "max_length": enc.max_length,
    }


def _onnx_meta(opset: int, num_tokens: int, d: int) -> dict[str, Any]:
    return {
        "exporter": "torch.onnx.export(dynamo=True)",
        "opset": int(opset),
        "inputs": [{"name": n, "dtype": "int64", "shape": ["batch", "seq"]} for n in INPUT_NAMES],
        "outputs": [{"name": OUTPUT_NAME, "dtype": "float32", "shape": ["batch", num_tokens, d]}],
    }


def write_sidecar(stage: Path, meta: dict[str, Any]) -> Path:
    """Write ``meta`` as ``stage/export.json`` (the stage is swapped in whole, so no temp file here)."""
    path = stage / SIDECAR
    path.write_text(json.dumps(meta, indent=2))
    return path


def summarize(meta: dict[str, Any]) -> str:
    """A few human-readable lines about an export (for the CLI)."""
    lines = [f"method {meta['method']}  m={meta['m']} r={meta.get('r')} T={meta['num_tokens']} d={meta['d']}"]
    lines += [f"  {name:28s} {f['bytes'] / 1e6:8.2f} MB" for name, f in meta["files"].items()]
    p = meta.get("parity", {})
    if "fp32" in p:
        f = p["fp32"]
        lines.append(
            f"fp32 parity: max|ΔZ| {f['max_abs_diff']:.2e} (≤ {f['tolerance']:g}) on {f['examples']} dev examples"
        )
    if "int8" in p:
        lines.append(f"int8 mode {meta['int8']['mode']}: {len(meta['int8']['fp32_nodes'])} weight MatMuls kept in fp32")
        lines.append(f"int8: max|ΔZ| {p['int8']['max_abs_diff']:.3g}, mean {p['int8']['mean_abs_diff']:.3g}")
    if "predictions" in p:
        lines += _prediction_lines(p["predictions"])
    if meta.get("web"):
        w = meta["web"]
        sizes = ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in w["sizes"].items())
        lines.append(f"web bundle {w['dir']}/ ({w['precision']}): {w['bytes'] / 1e6:.1f} MB; bundle size by precision: {sizes}")
    return "\n".join(lines)


def _prediction_lines(pr: dict[str, Any]) -> list[str]:
    lines = []
    for k in ("fp32", "int8"):
        if k in pr:
            ties = f", {pr[k]['disagreements_beyond_ties']} beyond numerical ties" if pr[k]["disagreements"] else ""
            lines.append(
                f"{k} predictions vs torch on {pr['examples']} dev examples: agreement {pr[k]['agreement']:.2%} "
                f"({pr[k]['disagreements']} differ{ties}), accuracy {pr[k]['accuracy']:.4f} "
                f"(torch {pr['torch']['accuracy']:.4f})"
            )
    return lines
