"""The launcher's guard over a run directory: one launcher at a time, no silent overwrite, an honest status.

``lopa-fed simulate`` / ``deploy-local`` (and :func:`server.launch.simulate` /
:func:`~server.launch.deploy_local`) go through :func:`check_run_dir` before anything is
written, then hold :func:`claim` for the whole launch:

* an existing run (``run.json``, ``state.json``, ``global/``, ``rounds.json*`` or client
  private-state files) is refused unless ``--resume`` (continue it) or ``--force``
  (delete it and start afresh) is given;
* ``--resume`` needs a readable ``state.json`` and ``global/latest.safetensors`` and, with
  ``on-bad-private-state = "error"``, readable private-state files, all checked before
  Flower starts, so a broken file is a one-line error naming it and nothing is changed;
* the task's data must be found where the clients will look;
* ``OUT/.lock`` is held with an exclusive ``flock`` (a second launcher on the same
  directory is refused; the lock goes with the launcher's process).

The status in ``run.json`` is a small state machine::

    (none) --launcher--> running --ServerApp, after the last round--> completed
                            \\--launcher, when flwr run ended any other way--> failed (+ "error")

A completed run in which some round had no usable client reply is still reported as a
failure by :func:`round_failures` (the launcher exits non-zero).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from lopa_fed import atomic
from lopa_fed.checkpoint import CheckpointError, load_tensors
from lopa_fed.errors import ConfigError, LoPAError, OutputExistsError
from lopa_fed.federation import FedSettings
from lopa_fed.federation.paths import GLOBAL_DIR, PRIVATE_PATTERN, RUN_FILE, STATE_FILE, absolute, data_dir

from .metrics import ROUNDS_JSON, ROUNDS_JSONL, read_rounds
from .rundir import RunDir

__all__ = [
    "LOCK_FILE", "RunBusyError", "RunFailedError", "check_run_dir", "claim", "existing_run", "finish",
    "mark_failed", "private_dir_of", "round_failures",
]

LOCK_FILE = ".lock"
#: Files and directories that make ``OUT`` a run directory (besides client private state).
RUN_MARKERS = (RUN_FILE, STATE_FILE, GLOBAL_DIR, ROUNDS_JSONL, ROUNDS_JSON)
#: What ``--force`` deletes in ``OUT`` (with the private-state files).
RUN_OUTPUTS = (*RUN_MARKERS, "rounds.png", "run-config.toml", "logs", "flwr-home", "secagg", "tls", "keys")


class RunBusyError(LoPAError, RuntimeError):
    """Another launcher holds the run directory's lock."""


class RunFailedError(LoPAError, RuntimeError):
    """A launched run did not complete, or some round had no usable client reply; the message says which and why."""


def private_dir_of(run_config: Mapping[str, Any], out: Path) -> Path:
    """The clients' private-state directory: ``private-dir`` (absolute) or ``OUT/private``."""
    return Path(absolute(str(run_config.get("private-dir", "") or "")) or out / "private")


def _private_files(private: Path) -> list[Path]:
    if not private.is_dir():
        return []
    return sorted(p for p in private.iterdir() if PRIVATE_PATTERN.fullmatch(p.name))


def existing_run(out: Path, private: Path) -> list[str]:
    """What in ``out`` (and ``private``) belongs to an earlier run, as short names; empty for a fresh directory."""
    found = [name for name in RUN_MARKERS if (out / name).exists()]
    files = _private_files(private)
    if files:
        found.append(f"{len(files)} client private-state file(s) in {private}")
    return found


def check_run_dir(out: Path, run_config: Mapping[str, Any], *, force: bool = False) -> None:
    """Refuse a launch that would overwrite a run or could not start; writes nothing.

    Raises
    ------
    ConfigError
        ``--resume`` together with ``--force``.
    OutputExistsError
        ``out`` holds a run and neither ``--resume`` nor ``--force`` was given.
    CheckpointError
        ``--resume``: ``state.json``, ``global/latest.safetensors`` or (with
        ``on-bad-private-state = "error"``) a private-state file is missing or unreadable.
    DataError
        The task's data cannot be found.
    """
    settings = FedSettings.from_run_config(run_config)
    resume = settings.server.resume
    if resume and force:
        raise ConfigError("--resume continues a run and --force replaces it; give one of them")
    private = private_dir_of(run_config, out)
    found = existing_run(out, private)
    if resume:
        _check_resume(out, settings, private)
    elif found and not force:
        raise OutputExistsError(
            f"{out} already holds a run ({', '.join(found)}); pass --resume to continue it, or --force to delete "
            "it (its global tensors and every client's private state) and start a new run"
        )
    _check_data(settings, str(run_config.get("data-dir", "") or ""))


def _check_resume(out: Path, settings: FedSettings, private: Path) -> None:
    rundir = RunDir(out, create=False)  # nothing is written by a check
    if not rundir.state_path.is_file():
        raise CheckpointError(
            f"cannot resume: {rundir.state_path} does not exist (no round of a run in {out} completed); "
            "start a new run without --resume (with --force if the directory holds an unfinished run)"
        )
    rundir.read_state()
    if settings.federate != "none":
        rundir.read_latest()
    if settings.paths.on_bad_private_state == "error":
        for path in _private_files(private):
            try:
                load_tensors(path)
            except CheckpointError as exc:
                raise CheckpointError(
                    f"cannot resume: client private state {path} is unreadable ({exc}); restore it, or pass "
                    "--set on-bad-private-state=fresh to start that client from fresh heads"
                ) from exc


def _check_data(settings: FedSettings, given: str) -> None:
    """The clients' training split can be read (the task's DataError, naming the path, otherwise)."""
    settings.task_spec.read("train", data_dir(given) or None, limit=1)


@contextlib.contextmanager
def claim(out: Path, run_config: Mapping[str, Any], *, force: bool = False) -> Iterator[int]:
    """Hold ``out/.lock``, re-check the directory under the lock, clear it for ``--force``, mark it running.

    Yields the first round this launch runs (``last-round + 1`` on resume, else 1).

    Raises
    ------
    RunBusyError
        Another launcher holds the lock.
    (and everything :func:`check_run_dir` raises)
    """
    check_run_dir(out, run_config, force=force)
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by Flower's processes
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            raise RunBusyError(
                f"{out} is in use by another lopa-fed launcher (pid {holder}); wait for it to end or use another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        check_run_dir(out, run_config, force=force)  # what another launcher did before we got the lock
        resume = FedSettings.from_run_config(run_config).server.resume
        if force:
            _clear(out, private_dir_of(run_config, out))
        first = RunDir(out, create=False).read_state()[1] + 1 if resume else 1
        _mark_running(out, resume)
        yield first
    finally:
        os.close(fd)  # releases the lock


def _clear(out: Path, private: Path) -> None:
    """``--force``: delete the earlier run's outputs and private-state files."""
    for name in RUN_OUTPUTS:
        p = out / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()
    for p in _private_files(private):
        p.unlink()


def _read_info(out: Path) -> dict[str, Any]:
    try:
        info = json.loads((out / RUN_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _mark_running(out: Path, resume: bool) -> None:
    info = _read_info(out) if resume else {}
    info.update(status="running", launcher_pid=os.getpid(), launched=time.time())
    info.pop("error", None)
    atomic.write_text(out / RUN_FILE, json.dumps(info, indent=2, sort_keys=True))


def _one_line(text: str, limit: int = 600) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


_ERROR_LINE = re.compile(r"\b([A-Za-z_][\w.]*(?:Error|Exception)): (.+)")


def log_cause(log_path: Path) -> str:
    """The last ``SomeError: message`` line of a log, or ``""``."""
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    for line in reversed(lines):
        m = _ERROR_LINE.search(line)
        if m:
            return _one_line(f"{m.group(1).rsplit('.', 1)[-1]}: {m.group(2)}")
    return ""


def finish(out: Path, returncode: int, log_path: Path) -> str | None:
    """After ``flwr run``: ``None`` if the run completed, else its cause (also written to ``run.json`` as failed)."""
    info = _read_info(out)
    if info.get("status") == "completed" and returncode == 0:
        return None
    cause = log_cause(log_path) or f"flwr run exited with code {returncode} and status {info.get('status')!r}"
    return mark_failed(out, cause, flwr_returncode=int(returncode))


def mark_failed(out: Path, cause: str, **extra: Any) -> str:
    """Write ``status: failed`` and ``error`` (where the run stopped, and why) into ``run.json``; returns ``error``."""
    info = _read_info(out)
    done = [int(r["round"]) for r in read_rounds(out)]
    where = f"stopped after round {max(done)}" if done else "stopped before round 1 completed"
    info.update(status="failed", error=f"{where}: {_one_line(cause)}", **extra)
    atomic.write_text(out / RUN_FILE, json.dumps(info, indent=2, sort_keys=True))
    return str(info["error"])


#: Exceptions Flower and Ray wrap a ClientApp's own exception in.
_WRAPPERS = ("ClientAppException", "RayTaskError", "RayActorError")
_TRACEBACK_LINE = re.compile(r"^\s*([A-Za-z_][\w.]*(?:Error|Exception)): (\S.*)$", re.MULTILINE)
_CLASS_REPR = re.compile(r"<class '([\w.]+)'>:<'(.*)'>", re.DOTALL)


def client_cause(reason: str) -> str:
    """A client's error reply as ``ErrorClass: message``: the exception the ClientApp raised, not its wrappers.

    Flower's reason is ``error reply: <class 'X'>:<'message'>``; under Ray the message is a
    traceback ending in the wrappers, so the last traceback line that is not a wrapper wins.
    """
    lines = [m for m in _TRACEBACK_LINE.finditer(reason) if not any(w in m.group(1) for w in _WRAPPERS)]
    if lines:
        return _one_line(f"{lines[-1].group(1).rsplit('.', 1)[-1]}: {lines[-1].group(2)}")
    m = _CLASS_REPR.search(reason)
    if m and not any(w in m.group(1) for w in _WRAPPERS):
        return _one_line(f"{m.group(1).rsplit('.', 1)[-1]}: {m.group(2)}")
    return _one_line(reason)


def _reasons(rec: Mapping[str, Any], *keys: str) -> str:
    for key in keys:
        reasons = [str(x.get("reason", "")) for x in rec.get(key) or []]
        if reasons:
            return client_cause(reasons[0])
    return "no reply within round-timeout"


def round_failures(rounds: list[dict[str, Any]]) -> list[str]:
    """One line per round in which clients failed; a line starts with ``!`` when *every* client failed."""
    out = []
    for r in rounds:
        sampled, replied, failed, rejected = (int(r.get(k, 0)) for k in ("sampled", "replied", "failed", "rejected"))
        if sampled and not replied:
            cause = _reasons(r, "failed_reasons", "rejected_reasons")
            out.append(f"!round {r['round']}: all {sampled} clients failed in training ({failed} failed, "
                       f"{rejected} rejected): {cause}")
        elif failed or rejected:
            cause = _reasons(r, "failed_reasons", "rejected_reasons")
            out.append(f"round {r['round']}: {failed} failed, {rejected} rejected of {sampled} clients: {cause}")
        if int(r.get("eval_failed", 0)) and not int(r.get("eval_replied", 0)):
            cause = _reasons(r, "eval_failed_reasons")
            out.append(f"!round {r['round']}: every client failed in evaluation: {cause}")
    return out
