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
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import atomic
from .config import ConfigError, LoPAConfig, TrainConfig
from .errors import CheckpointError
from .model import PromptedModel

FORMAT = "lopa-fed-checkpoint/1"
_KINDS = ("auto", "classifier", "mlm", "causal")
#: LoPAConfig fields that only say how training started; a checkpoint loads whatever they were.
_INIT_ONLY = ("zs_init", "zs_init_std")
SHARED_FILE = "shared.safetensors"
PRIVATE_FILE = "private.safetensors"
CONFIG_FILE = "config.json"


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
    cpu = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic.write_with(path, lambda tmp: save_file(cpu, tmp, metadata=metadata))


def load_tensors(path: str | os.PathLike, finite: bool = True) -> dict[str, torch.Tensor]:
    """Read a safetensors file, turning a corrupt, missing or non-finite file into :class:`CheckpointError`.

    With ``finite=True`` (the default) a tensor holding NaN or Inf is an error naming the tensor.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"missing tensor file: {path}")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a valid safetensors file ({exc})") from exc
    if finite:
        bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if bad:
            raise CheckpointError(f"{path}: tensor(s) {', '.join(sorted(bad))} hold NaN or Inf; the run diverged")
    return tensors


def save_checkpoint(directory: str | os.PathLike, model: PromptedModel, **extra: Any) -> Path:
    """Write ``model``'s trainable tensors and config to ``directory``; returns the directory.

    ``extra`` keys (e.g. ``task``, ``train``) are stored in ``config.json``. The directory is
    written as a temporary sibling and swapped in whole, so an interrupt leaves the old
    checkpoint (or none), never new shared tensors beside old private ones.
    """
    d = Path(directory)
    cfg = describe(model, **extra)
    shared = model.state(model.shared_names())
    private = model.state(model.private_names())
    with atomic.staged_dir(d) as stage:  # the whole directory is swapped in at once
        save_tensors(stage / SHARED_FILE, shared, {"format": FORMAT, "role": "shared"})
        if private:
            save_tensors(stage / PRIVATE_FILE, private, {"format": FORMAT, "role": "private"})
        (stage / CONFIG_FILE).write_text(json.dumps(cfg, indent=2, sort_keys=True))
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
        if isinstance(cfg.get("train"), dict):
            TrainConfig.from_dict(cfg["train"])
    except (KeyError, ConfigError, TypeError) as exc:
        raise CheckpointError(f"{p}: invalid 'lopa' or 'train' section: {exc}") from exc
    if not isinstance(cfg.get("frozen_model"), str) or not cfg["frozen_model"]:
        raise CheckpointError(f"{p}: 'frozen_model' is missing; it names the frozen model the prompt was trained for")
    if cfg.get("frozen_kind", "auto") not in _KINDS:
        raise CheckpointError(f"{p}: 'frozen_kind' must be one of {', '.join(_KINDS)}, got {cfg.get('frozen_kind')!r}")
    return cfg


def mismatches(saved: dict[str, Any], model: PromptedModel) -> list[str]:
    """Human-readable differences between a saved config and ``model``."""
    saved, want = dict(saved), describe(model)
    for cfg in (saved, want):  # how Zs was initialised does not change what the tensors mean
        if isinstance(cfg.get("lopa"), dict):
            cfg["lopa"] = {k: v for k, v in cfg["lopa"].items() if k not in _INIT_ONLY}
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


def load_model(
    checkpoint: str | os.PathLike,
    client_state: str | os.PathLike | None = None,
    *,
    model: str | None = None,
    encoder: str | None = None,
) -> tuple[PromptedModel, Any, dict[str, Any]]:
    """Rebuild the model a checkpoint was trained with and load its tensors: the one way to do it.

    Parameters
    ----------
    checkpoint : path
        A checkpoint directory, or a ``lopa-fed train`` run directory holding ``checkpoint/``.
    client_state : path, optional
        A federated client's private tensors (safetensors, the names of ``private.safetensors``),
        loaded instead of the checkpoint's private tensors; the shared tensors stay global.
    model, encoder : str, optional
        Override the frozen model / instance encoder names (default: the recorded identities).

    Returns
    -------
    (PromptedModel, Task, dict)
        The loaded model in eval mode, its task and the checkpoint config.

    Raises
    ------
    CheckpointError
        Missing, corrupt, non-finite or mismatched files, or a client state of another shape.
    """
    from .model import build_model
    from .tasks import get_task
    from .weights import name_for_identity

    d = Path(checkpoint)
    if (d / "checkpoint" / CONFIG_FILE).is_file():
        d = d / "checkpoint"
    cfg = read_config(d)
    if not cfg.get("task"):
        raise CheckpointError(f"{d / CONFIG_FILE} records no task; it is needed to rebuild the model")
    task = get_task(cfg["task"])
    lcfg = LoPAConfig.from_dict(cfg["lopa"])
    pm = build_model(
        task,
        lcfg,
        model=model or name_for_identity(cfg["frozen_model"]),
        encoder=encoder or name_for_identity(cfg.get("encoder") or "default"),
        kind=cfg.get("frozen_kind", "auto"),
    )
    load_checkpoint(d, pm, private=client_state is None)
    if client_state is not None:
        tensors = load_tensors(client_state)
        want = set(pm.private_names())
        if set(tensors) != want:
            raise CheckpointError(
                f"client state {client_state} holds {sorted(tensors)} but method {lcfg.method!r} has private "
                f"tensors {sorted(want)}"
            )
        pm.load_state(tensors)
    return pm.eval(), task, cfg
