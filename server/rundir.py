"""The server's run directory: run info, resume state and the global tensors of every round.

Layout::

    run.json                       settings, federated tensor names, status
    state.json                     state-tag and last completed round (for --resume)
    global/round-NNN.safetensors   global shared tensors after round NNN (000: the initial ones)
    global/latest.safetensors      the newest of those

Every file is written atomically (:mod:`lopa_fed.atomic`, :func:`lopa_fed.checkpoint.save_tensors`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lopa_fed import atomic
from lopa_fed.checkpoint import CheckpointError, load_tensors, save_tensors
from lopa_fed.federation.paths import GLOBAL_DIR, LATEST_FILE, RUN_FILE, STATE_FILE, round_file

from .validation import Spec, specs_of

GLOBAL_FORMAT = "lopa-fed-global/1"


@dataclass(frozen=True)
class Resumed:
    """Where a resumed run continues: its ``state_tag``, the ``last_round`` it completed and the globals then."""

    state_tag: str
    last_round: int
    arrays: dict[str, np.ndarray]


class RunDir:
    """The output directory of one federated run.

    Parameters
    ----------
    root : Path
        Absolute output directory.
    create : bool
        Create it (the ServerApp); ``False`` for read-only checks (the launcher).
    """

    def __init__(self, root: Path, create: bool = True) -> None:
        self.root = Path(root)
        if create:
            self.root.mkdir(parents=True, exist_ok=True)

    @property
    def state_path(self) -> Path:
        """``state.json``."""
        return self.root / STATE_FILE

    def write_info(self, info: dict[str, Any]) -> None:
        """Atomically (re)write ``run.json``."""
        atomic.write_text(self.root / RUN_FILE, json.dumps(info, indent=2, sort_keys=True))

    def save_state(self, state_tag: str, last_round: int) -> None:
        """Record that ``last_round`` completed (what ``--resume`` continues from)."""
        state = {"state-tag": state_tag, "last-round": int(last_round), "output_dir": str(self.root)}
        atomic.write_text(self.state_path, json.dumps(state, indent=2, sort_keys=True))

    def save_global(self, arrays: dict[str, np.ndarray], server_round: int, state_tag: str) -> None:
        """Write the globals after ``server_round`` as ``round-NNN`` and ``latest``."""
        tensors = {k: torch.from_numpy(np.ascontiguousarray(v).copy()) for k, v in arrays.items()}
        meta = {"round": str(server_round), "state-tag": state_tag, "format": GLOBAL_FORMAT}
        save_tensors(self.root / GLOBAL_DIR / round_file(server_round), tensors, meta)
        save_tensors(self.root / GLOBAL_DIR / LATEST_FILE, tensors, meta)

    def read_state(self) -> tuple[str, int]:
        """``(state_tag, last_round)`` from ``state.json``.

        Raises
        ------
        CheckpointError
            ``state.json`` is missing or unreadable.
        """
        try:
            state = json.loads(self.state_path.read_text())
            return str(state["state-tag"]), int(state["last-round"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"cannot resume from {self.root}: {self.state_path} is unreadable ({exc})") from exc

    def read_latest(self) -> dict[str, np.ndarray]:
        """The global tensors of ``global/latest.safetensors`` (CheckpointError naming the file if unusable)."""
        try:
            latest = load_tensors(self.root / GLOBAL_DIR / LATEST_FILE)
        except CheckpointError as exc:
            raise CheckpointError(f"cannot resume from {self.root}: {exc}") from exc
        return {k: v.numpy() for k, v in latest.items()}

    def resume(self, specs: dict[str, Spec]) -> Resumed | None:
        """The saved state to continue from, or ``None`` if this directory has no ``state.json``.

        Raises
        ------
        CheckpointError
            ``state.json`` or ``global/latest.safetensors`` is unreadable, or the saved globals do
            not have the federated tensors' names, shapes and dtypes.
        """
        if not self.state_path.is_file():
            return None
        tag, last = self.read_state()
        saved = self.read_latest() if specs else {}
        if specs_of(saved) != specs:
            raise CheckpointError(
                f"cannot resume from {self.root}: saved globals {sorted(saved)} do not match {sorted(specs)}"
            )
        return Resumed(tag, last, saved)
