"""Kernel-level side of a sandboxed run (parent side): pids cgroups, rlimits, a network namespace.

* :class:`PidsCgroups` creates one ``pids`` cgroup per run (``pids.max``, enforced even for
  root, where ``RLIMIT_NPROC`` is not), kills everything in it after the run, and removes it.
  Best-effort: without a writable pids hierarchy nothing is created.
* :func:`rlimits` computes the ``setrlimit`` triples of a run, clamped to the parent's hard limits.
* :func:`make_preexec` builds the ``preexec_fn`` that, between fork and exec, joins the
  cgroup, sets the rlimits and moves the child to a fresh, empty network namespace
  (``unshare(CLONE_NEWNET)``, when permitted; silently skipped otherwise).
* :func:`kill_group` kills a run's process group; :func:`collect` reads its pipes.
* :func:`features` reports which of these are available here.
"""

from __future__ import annotations

import itertools
import os
import resource
import selectors
import signal
import subprocess
import threading
import time
from collections.abc import Callable

__all__ = ["CGROUPS", "PidsCgroups", "collect", "features", "kill_group", "make_preexec", "rlimits", "unshare_fn"]

CLONE_NEWNET = 0x40000000


class PidsCgroups:
    """Create, sweep and remove one pids cgroup per sandboxed run (best-effort)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._base: str | None = None
        self._probed = False
        self._counter = itertools.count()

    def _probe(self) -> str | None:
        try:
            with open("/proc/self/cgroup", encoding="utf-8") as fh:
                entries = [line.rstrip("\n").split(":", 2) for line in fh if line.strip()]
        except OSError:
            return None
        for _, controllers, rel in entries:
            if "pids" in controllers.split(","):
                base = "/sys/fs/cgroup/pids" + rel.rstrip("/")
                if os.path.isfile(os.path.join(base, "cgroup.procs")):
                    return base
        for _, controllers, rel in entries:
            if controllers == "":  # cgroup v2
                base = "/sys/fs/cgroup" + rel.rstrip("/")
                try:
                    with open(os.path.join(base, "cgroup.subtree_control"), encoding="utf-8") as fh:
                        if "pids" in fh.read().split():
                            return base
                except OSError:
                    pass
        return None

    def _cleanup_stale(self, base: str) -> None:
        try:
            names = os.listdir(base)
        except OSError:
            return
        for name in names:
            parts = name.split("_")
            if len(parts) == 4 and parts[:2] == ["lopa", "sbx"] and parts[2].isdigit():
                if not os.path.exists(f"/proc/{parts[2]}"):
                    self.remove(os.path.join(base, name))

    def create(self, max_procs: int) -> str | None:
        """Return the path of a fresh cgroup limited to ``max_procs`` tasks, or None."""
        with self._lock:
            if not self._probed:
                self._probed = True
                self._base = self._probe()
                if self._base is not None:
                    self._cleanup_stale(self._base)
            base = self._base
        if base is None:
            return None
        path = os.path.join(base, f"lopa_sbx_{os.getpid()}_{next(self._counter)}")
        try:
            os.mkdir(path)
        except OSError:
            with self._lock:
                self._base = None  # not writable: stop trying
            return None
        try:
            with open(os.path.join(path, "pids.max"), "w", encoding="utf-8") as fh:
                fh.write(str(max_procs))
        except OSError:
            self.remove(path)
            return None
        return path

    @staticmethod
    def pids(path: str) -> list[int]:
        """Pids currently in the cgroup."""
        try:
            with open(os.path.join(path, "cgroup.procs"), encoding="utf-8") as fh:
                return [int(x) for x in fh.read().split()]
        except (OSError, ValueError):
            return []

    def kill_all(self, path: str) -> None:
        """SIGKILL every process in the cgroup until it is empty (bounded)."""
        for _ in range(200):
            pids = self.pids(path)
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.005)

    @staticmethod
    def remove(path: str) -> None:
        """Remove an (empty) cgroup directory, retrying briefly."""
        for _ in range(50):
            try:
                os.rmdir(path)
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.01)


CGROUPS = PidsCgroups()


def kill_group(pgid: int) -> None:
    """``SIGKILL`` the process group ``pgid`` (nothing if it is gone)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
_LIBC_LOCK = threading.Lock()
_LIBC_UNSHARE: object | None = None
_LIBC_PROBED = False


def unshare_fn() -> object | None:
    """``libc.unshare`` loaded once in the parent (so the child only calls it)."""
    global _LIBC_UNSHARE, _LIBC_PROBED
    with _LIBC_LOCK:
        if not _LIBC_PROBED:
            _LIBC_PROBED = True
            try:
                import ctypes

                fn = ctypes.CDLL(None, use_errno=True).unshare
                fn.argtypes = [ctypes.c_int]
                fn.restype = ctypes.c_int
                _LIBC_UNSHARE = fn
            except (OSError, AttributeError, ImportError):
                _LIBC_UNSHARE = None
        return _LIBC_UNSHARE


def _user_task_count(uid: int) -> int:
    """Number of tasks (threads) owned by ``uid``; RLIMIT_NPROC counts these."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status", encoding="utf-8") as fh:
                uid_ok, threads = False, 1
                for line in fh:
                    if line.startswith("Uid:"):
                        uid_ok = int(line.split()[1]) == uid
                    elif line.startswith("Threads:"):
                        threads = int(line.split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if uid_ok:
            total += threads
    return total


def rlimits(memory_mb: int, cpu_s: int, max_procs: int, max_file_mb: int) -> list[tuple[int, int, int]]:
    """``(resource, soft, hard)`` triples of one run, clamped to the parent's hard limits.

    ``RLIMIT_AS`` = ``memory_mb`` MiB, ``RLIMIT_CPU`` = ``cpu_s`` (hard ``cpu_s + 1``),
    ``RLIMIT_NPROC`` = ``max_procs`` (on top of the user's current task count when not
    root), ``RLIMIT_FSIZE`` = ``max_file_mb`` MiB, ``RLIMIT_NOFILE`` = 256, ``RLIMIT_CORE`` = 0.
    """
    mib = 1024 * 1024
    nproc = max_procs if os.geteuid() == 0 else _user_task_count(os.getuid()) + max_procs
    wanted = [
        (resource.RLIMIT_AS, memory_mb * mib, memory_mb * mib),
        (resource.RLIMIT_CPU, cpu_s, cpu_s + 1),
        (resource.RLIMIT_NPROC, nproc, nproc),
        (resource.RLIMIT_FSIZE, max_file_mb * mib, max_file_mb * mib),
        (resource.RLIMIT_NOFILE, 256, 256),
        (resource.RLIMIT_CORE, 0, 0),
    ]
    out = []
    for res, soft, hard in wanted:
        try:
            _, cur_hard = resource.getrlimit(res)
        except (OSError, ValueError):
            continue
        if cur_hard != resource.RLIM_INFINITY:
            hard = min(hard, cur_hard)
            soft = min(soft, hard)
        out.append((res, soft, hard))
    return out


def make_preexec(
    limits: list[tuple[int, int, int]], cgroup: str | None, unshare: object | None
) -> Callable[[], None]:
    """Build the ``preexec_fn``: join cgroup, set rlimits, new network namespace."""
    procs_file = os.path.join(cgroup, "cgroup.procs") if cgroup else None
    setrlimit = resource.setrlimit

    def preexec() -> None:  # runs in the child between fork and exec: keep it minimal
        if procs_file is not None:
            try:
                fd = os.open(procs_file, os.O_WRONLY)
                try:
                    os.write(fd, str(os.getpid()).encode())
                finally:
                    os.close(fd)
            except OSError:
                pass
        for res, soft, hard in limits:
            try:
                setrlimit(res, (soft, hard))
            except (OSError, ValueError):
                pass
        if unshare is not None:
            try:
                unshare(CLONE_NEWNET)  # type: ignore[operator]
            except Exception:  # noqa: BLE001 - silently keep the parent's network namespace
                pass

    return preexec


def collect(
    proc: subprocess.Popen, caps: dict[int, int], deadline: float, sweep: Callable[[], None]
) -> tuple[list[bytes], bool]:
    """Read pipes of ``proc`` until EOF or the deadline, keeping a bounded tail of each.

    Parameters
    ----------
    proc : Popen
        The running child.
    caps : dict
        Pipe read fd -> how many trailing bytes to keep.
    deadline : float
        ``time.monotonic()`` deadline.
    sweep : callable
        Kills leftover descendants once the child has exited (they may hold pipes open).

    Returns
    -------
    (tails, timed_out)
        One ``bytes`` tail per fd, in the order of ``caps``; whether the deadline hit first.
    """
    bufs = {fd: bytearray() for fd in caps}
    sel = selectors.DefaultSelector()
    for fd in caps:
        sel.register(fd, selectors.EVENT_READ)
    timed_out = False
    exited_at: float | None = None
    try:
        while sel.get_map():
            now = time.monotonic()
            if now >= deadline:
                timed_out = proc.poll() is None
                break
            if exited_at is None and proc.poll() is not None:
                exited_at = now
                sweep()  # descendants holding the pipes open
            if exited_at is not None and now - exited_at > 1.0:
                break
            for key, _ in sel.select(timeout=min(0.05, deadline - now)):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fd)
                    continue
                buf = bufs[key.fd]
                buf += chunk
                if len(buf) > 2 * caps[key.fd]:
                    del buf[: len(buf) - caps[key.fd]]
    finally:
        sel.close()
    return [bytes(bufs[fd][-caps[fd] :]) for fd in caps], timed_out


def features() -> dict[str, bool]:
    """Report which kernel-level protections are available in this environment.

    Returns
    -------
    dict
        ``pids_cgroup``: a per-run pids cgroup can be created (process count is
        enforced even for root); ``netns``: ``unshare(CLONE_NEWNET)`` is
        available (attempted, may still fail without privileges);
        ``nproc_enforced``: ``RLIMIT_NPROC`` is enforced (False for root).
    """
    path = CGROUPS.create(4)
    if path is not None:
        CGROUPS.remove(path)
    return {
        "pids_cgroup": path is not None,
        "netns": unshare_fn() is not None,
        "nproc_enforced": os.geteuid() != 0,
    }

