"""Checkpoints: safetensors plus a JSON config. No pickle, ever.

Layout of a checkpoint directory::

    config.json          # what was trained: method, sizes, task, models, roles, tensor manifest
    shared.safetensors   # task-level tensors (Zs, classifier head, LoRA, IDPG generator)
    private.safetensors  # per-user tensors (LoPA's u/v heads); absent when there are none

:func:`load_checkpoint` restores the tensors bit-exactly and refuses a checkpoint
whose config does not match the model it is loaded into.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import ConfigError, LoPAConfig
from .model import PromptedModel

FORMAT = "lopa-fed-checkpoint/1"
SHARED_FILE = "shared.safetensors"
PRIVATE_FILE = "private.safetensors"
CONFIG_FILE = "config.json"


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, or does not match the model; the message says which."""


def describe(model: PromptedModel, **extra: Any) -> dict[str, Any]:
    """The JSON config that identifies ``model``'s trainable state."""
    params = model.named_trainable()
    enc = model.encoder
    return {
        "format": FORMAT,
        "lopa": model.config.to_dict(),
        "frozen_model": model.frozen.identity,
        "frozen_kind": model.frozen.kind,
        "d": model.frozen.d,
        "encoder": enc.identity if enc is not None else None,
        "h": enc.hidden_size if enc is not None else None,
        "num_labels": model.num_labels,
        "label_words": list(model.label_words),
        "roles": model.roles(),
        "shapes": {n: list(p.shape) for n, p in params.items()},
        **extra,
    }


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Atomically write ``tensors`` to a safetensors file (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a safetensors file, turning a corrupt or missing file into :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"missing tensor file: {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a valid safetensors file ({exc})") from exc


def save_checkpoint(directory: str | os.PathLike, model: PromptedModel, **extra: Any) -> Path:
    """Write ``model``'s trainable tensors and config to ``directory``; returns the directory.

    ``extra`` keys (e.g. ``task``, ``train``) are stored in ``config.json``.
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    cfg = describe(model, **extra)
    shared = model.state(model.shared_names())
    private = model.state(model.private_names())
    save_tensors(d / SHARED_FILE, shared, {"format": FORMAT, "role": "shared"})
    if private:
        save_tensors(d / PRIVATE_FILE, private, {"format": FORMAT, "role": "private"})
    elif (d / PRIVATE_FILE).exists():
        (d / PRIVATE_FILE).unlink()
    tmp = d / (CONFIG_FILE + ".tmp")
    tmp.write_text(json.dumps(cfg, indent=2, sort_keys=True))
    os.replace(tmp, d / CONFIG_FILE)
    return d


def read_config(directory: str | os.PathLike) -> dict[str, Any]:
    """Read and sanity-check ``config.json`` of a checkpoint directory."""
    p = Path(directory) / CONFIG_FILE
    if not p.is_file():
        raise CheckpointError(f"{directory} is not a lopa-fed checkpoint: {CONFIG_FILE} is missing")
    try:
        cfg = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{p} is not valid JSON: {exc}") from exc
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        raise CheckpointError(f"{p}: unknown format {cfg.get('format') if isinstance(cfg, dict) else cfg!r}; expected {FORMAT}")
    try:
        LoPAConfig.from_dict(cfg["lopa"])
    except (KeyError, ConfigError, TypeError) as exc:
        raise CheckpointError(f"{p}: invalid 'lopa' section: {exc}") from exc
    return cfg


def mismatches(saved: dict[str, Any], model: PromptedModel) -> list[str]:
    """Human-readable differences between a saved config and ``model``."""
    want = describe(model)
    keys = ("lopa", "frozen_model", "frozen_kind", "d", "encoder", "h", "num_labels", "label_words", "shapes")
    out = []
    for k in keys:
        if saved.get(k) != want.get(k):
            if isinstance(want.get(k), dict) and isinstance(saved.get(k), dict):
                diff = sorted(
                    f"{kk}: saved {saved[k].get(kk)!r} vs model {want[k].get(kk)!r}"
                    for kk in set(saved[k]) | set(want[k])
                    if saved[k].get(kk) != want[k].get(kk)
                )
                out.append(f"{k} ({'; '.join(diff)})")
            else:
                out.append(f"{k}: saved {saved.get(k)!r} vs model {want.get(k)!r}")
    return out


def load_checkpoint(directory: str | os.PathLike, model: PromptedModel, private: bool = True) -> dict[str, Any]:
    """Load a checkpoint into ``model`` bit-exactly; returns its config.

    Raises :class:`CheckpointError` if the config does not match ``model`` (method, sizes,
    frozen model, encoder, labels or tensor shapes), or a file is missing or corrupt.
    With ``private=False`` only the shared tensors are loaded.
    """
    d = Path(directory)
    cfg = read_config(d)
    diff = mismatches(cfg, model)
    if diff:
        raise CheckpointError(f"checkpoint {d} does not match this model: " + "; ".join(diff))
    tensors = load_tensors(d / SHARED_FILE)
    if private and model.private_names():
        tensors.update(load_tensors(d / PRIVATE_FILE))
    expected = set(model.shared_names()) | (set(model.private_names()) if private else set())
    if set(tensors) != expected:
        raise CheckpointError(
            f"checkpoint {d} holds tensors {sorted(tensors)} but the model expects {sorted(expected)}"
        )
    model.load_state(tensors)
    return cfg
