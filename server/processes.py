"""Processes started by a launch, and how they are stopped: by PID, never by name.

:class:`Processes` starts each command in its own session with its output in a log file,
and :meth:`Processes.stop_all` stops them newest first (SIGTERM, then SIGKILL for the
process, its group and every descendant recorded before the stop).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from lopa_fed.errors import LoPAError

__all__ = ["LaunchError", "Processes", "alive", "descendants", "free_port", "wait_http"]


class LaunchError(LoPAError, RuntimeError):
    """A Flower process could not be started, or a run did not finish in time; the message names the log."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def descendants(pid: int) -> list[int]:
    """PIDs of every live descendant of ``pid`` (from ``/proc``; empty where there is no ``/proc``)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = entry.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


@dataclass
class Processes:
    """Processes started by a launch, stopped by PID."""

    procs: list[tuple[str, subprocess.Popen]] = field(default_factory=list)

    def start(self, name: str, cmd: list[str], log_path: Path, env: Mapping[str, str], cwd: Path | None = None) -> subprocess.Popen:
        """Start ``cmd`` in its own session with stdout+stderr to ``log_path``."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(log_path, "ab")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            cmd, stdout=fh, stderr=subprocess.STDOUT, env=dict(env), cwd=cwd, start_new_session=True
        )
        fh.close()
        self.procs.append((name, proc))
        return proc

    def pid_of(self, name: str) -> int:
        """PID of the process started as ``name``."""
        for n, p in self.procs:
            if n == name:
                return p.pid
        raise KeyError(name)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the process started as ``name`` (by PID)."""
        for n, p in self.procs:
            if n == name and p.poll() is None:
                os.kill(p.pid, sig)

    def stop_all(self, grace: float = 15.0) -> list[str]:
        """Stop every process (newest first): SIGTERM, wait ``grace`` s, then SIGKILL its group. Returns notes."""
        notes = []
        # Flower detaches some children (SuperExec, ServerApp, simulation) into their own
        # sessions; remember every descendant PID now so none outlives the launch.
        spawned = {p.pid: descendants(p.pid) for _, p in self.procs if p.poll() is None}
        for _name, p in reversed(self.procs):
            if p.poll() is None:
                try:
                    os.kill(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.time() + grace
        for name, p in reversed(self.procs):
            try:
                p.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                notes.append(f"{name} (pid {p.pid}) ignored SIGTERM; killed")
                try:
                    os.kill(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(timeout=10)
            # Children left in the process group we created (pgid == pid), e.g. flwr-clientapp workers.
            try:
                os.killpg(p.pid, signal.SIGKILL)
                notes.append(f"{name} (pgid {p.pid}): killed leftover group members")
            except (ProcessLookupError, PermissionError):
                pass
        wait_until = time.time() + 10.0
        while time.time() < wait_until and any(alive(x) for pids in spawned.values() for x in pids):
            time.sleep(0.2)
        for owner, pids in spawned.items():
            for pid in pids:
                if alive(pid):
                    try:
                        os.kill(pid, signal.SIGKILL)
                        notes.append(f"killed leftover descendant pid {pid} of pid {owner}")
                    except ProcessLookupError:
                        pass
        return notes


def alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def wait_http(port: int, proc: subprocess.Popen, timeout: float = 60.0, log_path: Path | None = None) -> None:
    """Wait until ``http://127.0.0.1:port/health`` answers (or fail if ``proc`` exits)."""
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text()[-2000:] if log_path and log_path.is_file() else ""
            raise LaunchError(f"process exited with code {proc.returncode} while starting (log: {log_path}):\n{tail}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=0.5).is_success:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise LaunchError(f"nothing answered on 127.0.0.1:{port} within {timeout:.0f}s (log: {log_path})")
