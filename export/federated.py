"""One client's personalised model, rebuilt from the files a federated run writes.

A ``lopa-fed simulate`` / ``deploy-local`` run directory (written by ``server/`` and ``clients/``)::

    run.json                                     settings (the run config), federated names, roles, status
    state.json                                   state-tag and last completed round
    global/round-NNN.safetensors                 global shared tensors after round NNN (000: the initial ones)
    global/latest.safetensors                    the newest of those
    private/partition-<i>-of-<n>.safetensors     client i's private tensors (run.json "private_dir")

Client ``i``'s personalised generator is the last round's global tensors plus its own private
tensors. :func:`load_client` parses the recorded settings with the federation contract
(:meth:`lopa_fed.federation.FedSettings.from_run_config`), builds the model exactly as both apps
do (:func:`lopa_fed.federation.new_model`) and loads both tensor files by name. Every file is parsed defensively:
a missing, stale or mismatched file is a :class:`~lopa_fed.errors.CheckpointError` naming it,
a bad partition a :class:`~lopa_fed.errors.ConfigError`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lopa_fed.checkpoint import load_tensors
from lopa_fed.errors import CheckpointError, ConfigError
from lopa_fed.federation import FedSettings, new_model
from lopa_fed.federation.paths import (
    GLOBAL_DIR,
    LATEST_FILE,
    ROUND_PATTERN,
    RUN_FILE,
    STATE_FILE,
)
from lopa_fed.model import PromptedModel
from lopa_fed.tasks import Task

from .errors import ExportError
from .runtime import sha256_file
from .tiers import client_settings, newest_private_files

__all__ = ["RunClient", "load_client", "read_run", "run_settings"]



@dataclass(frozen=True)
class RunClient:
    """One client of a federated run, ready to export.

    Attributes
    ----------
    model : PromptedModel
        Global shared tensors of the last round plus the client's private tensors (eval mode).
    task : Task
        The run's task.
    max_length : int
        Token limit the run trained with.
    seed : int
        The run's seed (code tasks: the seed of the train/test split).
    source : dict
        Provenance for ``export.json``: run, partition, round, files and their SHA-256.
    """

    model: PromptedModel
    task: Task
    max_length: int
    seed: int
    source: dict[str, Any]


def load_client(
    run: str | os.PathLike[str], partition: int, *, model: str | None = None, encoder: str | None = None
) -> RunClient:
    """Rebuild client ``partition``'s personalised model from the run directory ``run``.

    Parameters
    ----------
    run : path
        The run's output directory (``--out`` of ``lopa-fed simulate``).
    partition : int
        The client's partition id (0-based).
    model, encoder : str, optional
        Override the frozen model / instance encoder the run recorded.

    Raises
    ------
    CheckpointError
        ``run.json``/``state.json`` missing or not JSON, the run not finished, the global or
        private tensors missing, of another run, or not matching the rebuilt model.
    ConfigError
        ``partition`` is negative or out of range.
    """
    run = Path(run)
    info = read_run(run)
    private_path, num_partitions = private_file(run, info, partition)  # range checks before loading models
    settings = run_settings(run, info, model=model, encoder=encoder)
    if encoder is None:
        settings = client_settings(settings, private_path)  # the client's own encoder tier, r and hidden
    pm = new_model(settings)
    if not pm.config.has_generator:
        raise ExportError(f"federated run {run} trained {pm.config.method!r}, which has no prompt generator")
    _check_roles(run, info, pm)
    glob, rnd = global_file(run, info)
    shared = _read(glob, info)
    if private_path is None and _private_names(pm, shared):
        raise CheckpointError(
            f"{_expected_private(run, info, partition, num_partitions)} is missing: client {partition} never saved "
            f"its private state (did its training fail? see rounds.json 'failed_reasons' and logs/flwr-run.log in {run})"
        )
    private = _read(private_path, info) if private_path is not None else {}
    _load(pm, shared, private, glob, private_path)
    source = {
        "run": str(run.resolve()), "partition": int(partition), "num_partitions": num_partitions, "round": rnd,
        **_file_source("global", glob), **(_file_source("private", private_path) if private_path else {}),
        "state_tag": info.get("state-tag"),
    }
    return RunClient(pm.eval(), settings.task_spec, settings.train.max_length, settings.seed, source)


def _file_source(key: str, path: Path) -> dict[str, str]:
    return {key: str(path.resolve()), f"{key}_sha256": sha256_file(path)}


# ---------------------------------------------------------------------------- run.json and state.json
def _json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: {what}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} holds {type(data).__name__}, expected a JSON object")
    return data


def read_run(run: Path) -> dict[str, Any]:
    """``run.json`` of a finished run, with ``settings`` (hyphenated run-config keys) and ``last_round``.

    Raises
    ------
    CheckpointError
        Not a run directory, no settings, or the run has not finished all its rounds.
    """
    if not run.is_dir():
        raise CheckpointError(f"federated run directory {run} does not exist")
    info = _json(run / RUN_FILE, f"{run} is not a federated run directory (lopa-fed simulate --out writes it)")
    settings = info.get("settings")
    if not isinstance(settings, dict):
        raise CheckpointError(f"{run / RUN_FILE} has no 'settings' object (the run config)")
    info["settings"] = {str(k).replace("_", "-"): v for k, v in settings.items()}
    status = info.get("status")
    state = _json(run / STATE_FILE, "the run never completed a round")
    last, total = state.get("last-round"), info["settings"].get("num-server-rounds")
    if status != "completed" or (isinstance(last, int) and isinstance(total, int) and last < total):
        raise CheckpointError(
            f"federated run {run} is not finished (run.json status {status!r}, last completed round {last} of "
            f"{total}); wait for it, or continue it with `lopa-fed simulate --resume`, then export"
        )
    if state.get("state-tag") and info.get("state-tag") and state["state-tag"] != info["state-tag"]:
        raise CheckpointError(f"{run / STATE_FILE} and {run / RUN_FILE} record different state tags: mixed runs")
    info["last_round"] = last
    return info


# ---------------------------------------------------------------------------- the model
def run_settings(
    run: Path, info: dict[str, Any], *, model: str | None = None, encoder: str | None = None
) -> FedSettings:
    """The run's :class:`~lopa_fed.federation.FedSettings`, parsed from run.json by the federation contract.

    ``model`` / ``encoder`` replace the recorded frozen model / instance encoder.
    """
    try:
        settings = FedSettings.from_run_config(info["settings"])
        overrides = {k: v for k, v in (("model", model), ("encoder", encoder)) if v}
        return dataclasses.replace(settings, **overrides) if overrides else settings
    except ConfigError as exc:
        raise CheckpointError(f"{run / RUN_FILE}: the recorded settings are not a valid run config: {exc}") from exc


def _check_roles(run: Path, info: dict[str, Any], pm: PromptedModel) -> None:
    roles = info.get("roles")
    if isinstance(roles, dict) and roles != pm.roles():
        raise CheckpointError(
            f"{run / RUN_FILE} records tensors {sorted(roles)} but the model rebuilt from its settings has "
            f"{sorted(pm.roles())}; pass --model/--encoder if the run used other models"
        )


def _private_names(pm: PromptedModel, shared: dict[str, torch.Tensor]) -> list[str]:
    """Trainable names the global file does not hold: what the client kept to itself."""
    return [n for n in pm.named_trainable() if n not in shared]


def _load(
    pm: PromptedModel, shared: dict, private: dict, glob: Path, private_path: Path | None
) -> None:
    """Install global + private tensors; together they must be exactly the model's trainable tensors."""
    want = set(_private_names(pm, shared))
    if set(private) != want:
        raise CheckpointError(f"{private_path} holds {sorted(private)} but the client's private tensors are {sorted(want)}")
    unknown = sorted(set(shared) - set(pm.named_trainable()))
    if unknown:
        raise CheckpointError(f"{glob} holds {unknown}, which the model rebuilt from run.json does not have")
    try:
        pm.load_state({**shared, **private}, strict_keys=True)
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"{glob} / {private_path} do not fit the model rebuilt from run.json: {exc}") from exc


# ---------------------------------------------------------------------------- tensor files
def _read(path: Path, info: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Tensors of ``path`` (finite), refused if its metadata names another run's state tag."""
    tag = _metadata(path).get("state-tag")
    if tag and info.get("state-tag") and tag != info["state-tag"]:
        raise CheckpointError(f"{path} belongs to another run (state-tag {tag}, run.json has {info['state-tag']})")
    return load_tensors(path)


def _metadata(path: Path) -> dict[str, str]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path} is not a valid safetensors file ({exc})") from exc


def global_file(run: Path, info: dict[str, Any]) -> tuple[Path, int | None]:
    """The last round's global tensors: ``global/latest.safetensors``, else the highest ``round-NNN``."""
    gdir = run / GLOBAL_DIR
    rounds = sorted(
        (int(m.group(1)), p) for p in (gdir.iterdir() if gdir.is_dir() else []) if (m := ROUND_PATTERN.fullmatch(p.name))
    )
    path = gdir / LATEST_FILE if (gdir / LATEST_FILE).is_file() else (rounds[-1][1] if rounds else None)
    if path is None:
        raise CheckpointError(f"{gdir} holds no global tensors (latest.safetensors or round-NNN.safetensors)")
    meta_round = _metadata(path).get("round")
    rnd = int(meta_round) if meta_round and meta_round.isdigit() else (rounds[-1][0] if rounds else None)
    last = info.get("last_round")
    if isinstance(last, int) and rnd is not None and rnd != last:
        raise CheckpointError(f"{path} holds round {rnd} but state.json's last completed round is {last}")
    return path, rnd


def private_dir(run: Path, info: dict[str, Any]) -> Path:
    """The run's private-state directory (run.json ``private_dir``, else ``<run>/private``)."""
    pdir = Path(str(info.get("private_dir") or run / "private"))
    if not pdir.is_absolute():
        pdir = run / pdir
    if not pdir.is_dir() and (run / "private").is_dir():  # the run directory was moved or copied
        pdir = run / "private"
    return pdir


def _expected_private(run: Path, info: dict[str, Any], partition: int, n: int | None) -> Path:
    return private_dir(run, info) / f"partition-{partition}-of-{n if n is not None else 'N'}.safetensors"


def private_file(run: Path, info: dict[str, Any], partition: int) -> tuple[Path | None, int | None]:
    """Client ``partition``'s private-state file (``None`` if absent) and the run's number of partitions.

    Raises
    ------
    ConfigError
        ``partition`` is negative or not below the number of partitions.
    CheckpointError
        The directory mixes private state of runs with different numbers of partitions.
    """
    if isinstance(partition, bool) or not isinstance(partition, int) or partition < 0:
        raise ConfigError(f"--partition must be a partition id >= 0, got {partition!r}")
    pdir = private_dir(run, info)
    found = newest_private_files(pdir.iterdir() if pdir.is_dir() else [])  # per partition: the tier it ran last
    n = _num_partitions(info, {of for _, of in found}, pdir)
    if n is not None and partition >= n:
        raise ConfigError(f"--partition {partition} is out of range: run {run} has {n} partitions (0 to {n - 1})")
    return (found.get((partition, n)) if n is not None else None), n


def _num_partitions(info: dict[str, Any], sizes: set[int], pdir: Path) -> int | None:
    """The run's partition count: recorded in run.json if it is, else the ``-of-N`` of its private files."""
    for key in ("num-partitions", "num-clients"):
        for holder in (info, info["settings"]):
            value = holder.get(key, holder.get(key.replace("-", "_")))
            if isinstance(value, int) and value > 0:
                return value
    if len(sizes) > 1:
        raise CheckpointError(f"{pdir} holds private state of runs with {sorted(sizes)} partitions; cannot tell which")
    return next(iter(sizes), None)
