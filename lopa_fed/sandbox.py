"""Execution-based scoring of generated code (pass@1) in a constrained subprocess.

Every candidate program runs in its own ``python -I -B`` child process:

* **Wall clock.** The child leads a new session (``start_new_session=True``); on
  expiry the whole process group is killed with ``SIGKILL``.  The group (and the
  pids cgroup below, when available) is also swept after *every* run, so no
  stray grandchild survives its parent.
* **rlimits** (set in ``preexec_fn``): ``RLIMIT_AS`` (memory), ``RLIMIT_CPU``,
  ``RLIMIT_NPROC``, ``RLIMIT_FSIZE``, ``RLIMIT_NOFILE`` and ``RLIMIT_CORE=0``.
* **Process count.** ``RLIMIT_NPROC`` is *not* enforced by Linux for root (uid
  0 is exempt; this was verified on the development machine: ten forks
  succeeded under ``RLIMIT_NPROC=3``).  When a writable ``pids`` cgroup exists
  (cgroup v1 ``/sys/fs/cgroup/pids`` or a v2 hierarchy with the pids
  controller), each run gets its own cgroup with ``pids.max = max_procs``; that
  limit *is* enforced for root, and the cgroup is also used to kill escaped
  processes (e.g. ones that called ``setsid``).  On top of that the child
  prelude blocks process creation (see below).
* **Network.** The child is moved to a fresh, empty network namespace
  (``unshare(CLONE_NEWNET)`` through ``ctypes``) when permitted; otherwise this
  step is skipped silently.  The prelude also disables socket connections.
* **Files.** The child runs in a fresh temporary directory (also ``HOME`` and
  ``TMPDIR``), removed afterwards.  ``RLIMIT_FSIZE`` bounds file sizes.
* **I/O.** stdin is ``/dev/null``; captured stdout/stderr are bounded (only the
  last ``Limits.max_output_kb`` KiB of each are kept); the environment is
  scrubbed to a minimal one.

The **prelude** run inside the child before the candidate installs a
:func:`sys.addaudithook` hook (which Python code cannot remove) and patches a few
functions.  It denies process creation (``os.fork``/``forkpty``/``system``/
``exec*``/``spawn*``/``posix_spawn``, ``subprocess``, ``multiprocessing``,
``_posixsubprocess.fork_exec``), ``ctypes``, ``resource.setrlimit``, signals
to other processes, socket connections / DNS, and any file-system *mutation*
(open for writing, remove, rename, mkdir, chmod, link, ...) whose resolved path
lies outside the temporary working directory (``/dev/null`` is allowed).

.. warning::
   The prelude guard is **best-effort**.  The harness runs as root on the
   development machine, so file permissions protect nothing and a determined,
   adversarial program could get around an in-process Python guard.  The
   boundary that does not depend on the candidate's cooperation is the kernel
   one: rlimits, the pids cgroup, the network namespace, the process-group /
   cgroup kill and the throw-away working directory.  The sandbox is meant for
   scoring model-generated code (accidental infinite loops, memory blow-ups,
   fork loops, stray file writes), not for running hostile code.
"""

from __future__ import annotations

import itertools
import os
import resource
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

__all__ = [
    "ExecResult",
    "Limits",
    "STATUSES",
    "pass_at_1",
    "run_many",
    "run_program",
    "sandbox_features",
]

STATUSES: tuple[str, ...] = ("pass", "fail", "timeout", "error")

_MARKER = "@@LOPA_SANDBOX@@"
_CLONE_NEWNET = 0x40000000
_MAX_REASON = 500


@dataclass(frozen=True)
class Limits:
    """Resource limits for one sandboxed candidate.

    Parameters
    ----------
    timeout_s : float
        Wall-clock limit in seconds; the process group is killed on expiry.
    memory_mb : int
        Address-space limit (``RLIMIT_AS``) in MiB.
    cpu_s : int
        CPU-time limit (``RLIMIT_CPU``) in seconds; exceeding it is reported as
        ``"timeout"``.
    max_procs : int
        Maximum number of tasks (processes and threads) of the candidate:
        ``pids.max`` of its cgroup when available, and ``RLIMIT_NPROC`` (on top
        of the user's current count when not root).
    max_file_mb : int
        Largest file the candidate may write (``RLIMIT_FSIZE``) in MiB.
    max_output_kb : int
        Only the last this many KiB of stdout and of stderr are kept.
    """

    timeout_s: float = 5.0
    memory_mb: int = 512
    cpu_s: int = 5
    max_procs: int = 16
    max_file_mb: int = 10
    max_output_kb: int = 16


@dataclass(frozen=True)
class ExecResult:
    """Outcome of running one candidate program.

    Parameters
    ----------
    status : str
        ``"pass"`` (exit 0), ``"fail"`` (an ``AssertionError``), ``"timeout"``
        (wall clock or CPU limit) or ``"error"`` (any other exception, a
        syntax error, a signal, a resource limit).
    reason : str
        Short human-readable reason: the failing assertion, the exception line,
        the signal name, or ``""`` on pass.
    seconds : float
        Wall-clock duration of the child process.
    stdout : str
        Tail of the captured standard output (bounded).
    stderr : str
        Tail of the captured standard error (bounded).
    """

    status: str
    reason: str
    seconds: float
    stdout: str = ""
    stderr: str = ""

    @property
    def passed(self) -> bool:
        """Whether the candidate passed."""
        return self.status == "pass"


# --------------------------------------------------------------------------------------------------
# Code run inside the child, before the candidate (argv: prog_path, guard flag).
# --------------------------------------------------------------------------------------------------
_PRELUDE = r"""
import os, sys, builtins

def _lopa_sandbox_main():
    marker = "@@LOPA_SANDBOX@@"
    prog_path, guard = sys.argv[1], sys.argv[2] == "1"
    with open(prog_path, encoding="utf-8") as fh:
        src = fh.read()
    del sys.argv[1:]
    root = os.path.realpath(os.getcwd())
    real_exit, write = os._exit, os.write

    def report(kind, reason):
        reason = " ".join(str(reason).split())[:500]
        try:
            sys.stdout.flush()
        except BaseException:
            pass
        try:
            write(2, ("\n%s %s %s\n" % (marker, kind, reason)).encode("utf-8", "replace"))
        except BaseException:
            pass
        real_exit(0 if kind == "pass" else 1)

    if guard:
        import socket
        import _posixsubprocess

        class SandboxViolation(PermissionError):
            pass

        def deny(what):
            def blocked(*args, **kwargs):
                raise SandboxViolation("sandbox: %s is disabled" % what)
            return blocked

        write_flags = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
        allowed_files = {"/dev/null", "/dev/stdout", "/dev/stderr"}
        readlink, realpath, isabs, join = os.readlink, os.path.realpath, os.path.isabs, os.path.join
        fspath, fsdecode, getpid, getpgid = os.fspath, os.fsdecode, os.getpid, os.getpgid

        def inside(path, dir_fd=None, is_open=False):
            if isinstance(path, int):
                if is_open:
                    return True  # wrapping an already-open descriptor
                path = readlink("/proc/self/fd/%d" % path)
            p = fsdecode(fspath(path))
            if p in allowed_files:
                return True
            if isinstance(dir_fd, int) and dir_fd >= 0 and not isabs(p):
                p = join(readlink("/proc/self/fd/%d" % dir_fd), p)
            r = realpath(p)
            return r == root or r.startswith(root + os.sep) or r in allowed_files

        def check(event, path, dir_fd=None, is_open=False):
            try:
                ok = path is None or inside(path, dir_fd, is_open)
            except Exception:
                ok = False
            if not ok:
                raise SandboxViolation("sandbox: %s outside the working directory denied: %r" % (event, path))

        deny_exact = {
            "os.fork", "os.forkpty", "os.system", "os.exec", "os.spawn", "os.posix_spawn",
            "subprocess.Popen", "resource.setrlimit", "resource.prlimit", "signal.pthread_kill",
            "socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg", "socket.getaddrinfo",
            "socket.gethostbyname", "socket.gethostbyaddr", "socket.gethostname", "socket.getnameinfo",
            "socket.sethostname", "urllib.Request", "webbrowser.open", "os.chroot", "os.setns", "os.unshare",
        }
        deny_prefix = ("ctypes.", "http.client.", "ftplib.", "smtplib.", "poplib.", "imaplib.",
                       "nntplib.", "telnetlib.")
        # event -> ((index of a path argument, index of its dir_fd argument or None), ...)
        mutating = {
            "os.chmod": ((0, 2),), "os.chown": ((0, 3),), "os.chflags": ((0, None),),
            "os.lchflags": ((0, None),), "os.lchmod": ((0, None),), "os.mkdir": ((0, 2),),
            "os.remove": ((0, 1),), "os.rmdir": ((0, 1),), "os.truncate": ((0, None),),
            "os.utime": ((0, 3),), "os.setxattr": ((0, None),), "os.removexattr": ((0, None),),
            "os.mkfifo": ((0, 2),), "os.mknod": ((0, 3),), "shutil.rmtree": ((0, 1),),
            "shutil.chown": ((0, None),), "os.rename": ((0, 2), (1, 3)), "os.link": ((0, 2), (1, 3)),
            "shutil.move": ((0, None), (1, None)), "os.symlink": ((1, 2),),
            "shutil.copyfile": ((1, None),), "shutil.copymode": ((1, None),),
            "shutil.copystat": ((1, None),), "shutil.copytree": ((1, None),),
        }

        def hook(event, args):
            if event == "open":
                path, mode, flags = args
                if (isinstance(flags, int) and flags & write_flags) or (
                    isinstance(mode, str) and any(c in mode for c in "wax+")
                ):
                    check(event, path, is_open=True)
            elif event in mutating:
                for pi, di in mutating[event]:
                    if pi < len(args):
                        check(event, args[pi], args[di] if di is not None and di < len(args) else None)
            elif event in deny_exact or event.startswith(deny_prefix):
                raise SandboxViolation("sandbox: %s is disabled" % event)
            elif event == "import" and args[0] in ("ctypes", "_ctypes"):
                raise ImportError("sandbox: ctypes is disabled")
            elif event == "os.kill":
                if args[0] not in (0, getpid()):
                    raise SandboxViolation("sandbox: signalling other processes is disabled")
            elif event == "os.killpg":
                if args[0] != getpgid(0):
                    raise SandboxViolation("sandbox: signalling other process groups is disabled")

        for name in ("fork", "forkpty", "system", "popen", "posix_spawn", "posix_spawnp", "execv",
                     "execve", "execl", "execle", "execlp", "execlpe", "execvp", "execvpe", "spawnv",
                     "spawnve", "spawnl", "spawnle", "spawnlp", "spawnlpe", "spawnvp", "spawnvpe",
                     "_exit", "setuid", "setgid"):
            if hasattr(os, name):
                setattr(os, name, deny("os." + name))
        _posixsubprocess.fork_exec = deny("_posixsubprocess.fork_exec")
        socket.socket.connect = deny("socket.connect")
        socket.socket.connect_ex = deny("socket.connect_ex")
        for name in ("create_connection", "create_server", "getaddrinfo", "gethostbyname",
                     "gethostbyname_ex", "gethostbyaddr"):
            setattr(socket, name, deny("socket." + name))
        sys.modules["ctypes"] = None
        sys.modules["_ctypes"] = None
        sys.addaudithook(hook)

    import types
    try:
        code = compile(src, "<candidate>", "exec")
    except (SyntaxError, ValueError) as exc:
        report("error", "%s: %s" % (type(exc).__name__, exc))
    module = types.ModuleType("__candidate__")
    module.__builtins__ = builtins
    sys.modules["__candidate__"] = module
    try:
        exec(code, module.__dict__)
    except AssertionError as exc:
        line, tb = "", exc.__traceback__
        while tb is not None:
            if tb.tb_frame.f_code.co_filename == "<candidate>":
                line = tb.tb_lineno
            tb = tb.tb_next
        lines = src.splitlines()
        text = lines[line - 1].strip() if isinstance(line, int) and 0 < line <= len(lines) else ""
        msg = str(exc)
        reason = text or "AssertionError"
        if msg:
            reason = "%s -- %s" % (reason, msg)
        report("fail", reason)
    except MemoryError:
        module.__dict__.clear()
        report("error", "MemoryError")
    except SystemExit as exc:
        report("error", "SystemExit(%r) raised before the tests completed" % (exc.code,))
    except RecursionError as exc:
        report("error", "RecursionError: %s" % exc)
    except BaseException as exc:
        try:
            report("error", "%s: %s" % (type(exc).__name__, exc))
        except BaseException:
            report("error", type(exc).__name__)
    report("pass", "")

_lopa_sandbox_main()
"""


# --------------------------------------------------------------------------------------------------
# Kernel-level helpers (parent side)
# --------------------------------------------------------------------------------------------------
class _PidsCgroups:
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


_CGROUPS = _PidsCgroups()
_LIBC_LOCK = threading.Lock()
_LIBC_UNSHARE: object | None = None
_LIBC_PROBED = False


def _unshare_fn() -> object | None:
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


def _rlimits(limits: Limits) -> list[tuple[int, int, int]]:
    """(resource, soft, hard) triples, clamped to the parent's hard limits."""
    mib = 1024 * 1024
    nproc = limits.max_procs if os.geteuid() == 0 else _user_task_count(os.getuid()) + limits.max_procs
    wanted = [
        (resource.RLIMIT_AS, limits.memory_mb * mib, limits.memory_mb * mib),
        (resource.RLIMIT_CPU, limits.cpu_s, limits.cpu_s + 1),
        (resource.RLIMIT_NPROC, nproc, nproc),
        (resource.RLIMIT_FSIZE, limits.max_file_mb * mib, limits.max_file_mb * mib),
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


def _make_preexec(rlimits: list[tuple[int, int, int]], cgroup: str | None, unshare: object | None):
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
        for res, soft, hard in rlimits:
            try:
                setrlimit(res, (soft, hard))
            except (OSError, ValueError):
                pass
        if unshare is not None:
            try:
                unshare(_CLONE_NEWNET)  # type: ignore[operator]
            except Exception:  # noqa: BLE001 - silently keep the parent's network namespace
                pass

    return preexec


def sandbox_features() -> dict[str, bool]:
    """Report which kernel-level protections are available in this environment.

    Returns
    -------
    dict
        ``pids_cgroup``: a per-run pids cgroup can be created (process count is
        enforced even for root); ``netns``: ``unshare(CLONE_NEWNET)`` is
        available (attempted, may still fail without privileges);
        ``nproc_enforced``: ``RLIMIT_NPROC`` is enforced (False for root).
    """
    path = _CGROUPS.create(4)
    if path is not None:
        _CGROUPS.remove(path)
    return {
        "pids_cgroup": path is not None,
        "netns": _unshare_fn() is not None,
        "nproc_enforced": os.geteuid() != 0,
    }


# --------------------------------------------------------------------------------------------------
# Running one program
# --------------------------------------------------------------------------------------------------
def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _collect(
    proc: subprocess.Popen, deadline: float, cap: int, sweep: Callable[[], None]
) -> tuple[bytes, bytes, bool]:
    """Read both pipes (keeping bounded tails) until EOF or the deadline.

    ``sweep`` kills leftover descendants once the main child has exited (they may
    hold the pipes open).  Returns (stdout tail, stderr tail, timed_out).
    """
    bufs = {proc.stdout: bytearray(), proc.stderr: bytearray()}
    sel = selectors.DefaultSelector()
    for stream in bufs:
        sel.register(stream, selectors.EVENT_READ)
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
                    sel.unregister(key.fileobj)
                    continue
                buf = bufs[key.fileobj]
                buf += chunk
                if len(buf) > 2 * cap:
                    del buf[: len(buf) - cap]
    finally:
        sel.close()
    out, err = (bytes(b[-cap:]) for b in bufs.values())
    return out, err, timed_out


def _classify(rc: int, stderr: str, timed_out: bool, limits: Limits) -> tuple[str, str]:
    if timed_out:
        return "timeout", f"wall-clock timeout after {limits.timeout_s:g} s"
    report = None
    for line in stderr.splitlines():
        if line.startswith(_MARKER + " "):
            report = line[len(_MARKER) + 1 :]
    if rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = f"signal {-rc}"
        if -rc == signal.SIGXCPU:
            return "timeout", f"CPU time limit of {limits.cpu_s} s exceeded (SIGXCPU)"
        if -rc == signal.SIGXFSZ:
            return "error", f"file size limit of {limits.max_file_mb} MiB exceeded (SIGXFSZ)"
        return "error", f"killed by {name}"
    if report is not None:
        kind, _, reason = report.partition(" ")
        if kind == "pass" and rc == 0:
            return "pass", ""
        if kind in ("fail", "error"):
            return kind, reason
    if rc == 0:
        return "error", "candidate exited before the tests completed"
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    return "error", (lines[-1][:_MAX_REASON] if lines else f"exit code {rc}")


def run_program(source: str, limits: Limits = Limits(), *, guard: bool = True) -> ExecResult:
    """Run one candidate program in a fresh sandboxed Python subprocess.

    Parameters
    ----------
    source : str
        Complete Python program (candidate code plus its tests).  It is executed
        as a module named ``__candidate__`` (so ``if __name__ == "__main__":``
        blocks do not run), with ``cwd`` a fresh temporary directory.
    limits : Limits
        Resource limits.
    guard : bool
        Install the in-process prelude guard (default).  ``False`` exists only to
        test the kernel-level limits on their own; never score with it.

    Returns
    -------
    ExecResult
        ``pass`` if the program ran to completion, ``fail`` on an
        ``AssertionError`` (reason: the assert line), ``timeout`` on the wall
        clock or CPU limit, ``error`` otherwise (exception line or signal).
    """
    cap = max(1, int(limits.max_output_kb)) * 1024
    top = tempfile.mkdtemp(prefix="lopa-sbx-")
    workdir = os.path.join(top, "work")
    os.mkdir(workdir)
    prog = os.path.join(top, "candidate.py")
    with open(prog, "w", encoding="utf-8") as fh:
        fh.write(source)
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": workdir,
        "TMPDIR": workdir,
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONHASHSEED": "0",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    cgroup = _CGROUPS.create(limits.max_procs)

    def sweep() -> None:
        if proc is not None:
            _kill_group(proc.pid)
        if cgroup is not None:
            _CGROUPS.kill_all(cgroup)

    preexec = _make_preexec(_rlimits(limits), cgroup, _unshare_fn())
    argv = [sys.executable, "-I", "-B", "-c", _PRELUDE, prog, "1" if guard else "0"]
    start = time.monotonic()
    proc = None
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=workdir,
            env=env,
            start_new_session=True,
            preexec_fn=preexec,
            close_fds=True,
        )
        out, err, timed_out = _collect(proc, start + limits.timeout_s, cap, sweep)
        if timed_out:
            _kill_group(proc.pid)
        try:
            rc = proc.wait(timeout=max(1.0, limits.timeout_s))
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid)
            rc = proc.wait()
            timed_out = True
        seconds = time.monotonic() - start
    finally:
        if proc is not None:
            _kill_group(proc.pid)  # anything left in the session's group
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
        if cgroup is not None:
            _CGROUPS.kill_all(cgroup)  # processes that escaped the group (setsid)
            _CGROUPS.remove(cgroup)
        shutil.rmtree(top, ignore_errors=True)
    stdout = out.decode("utf-8", "replace")
    stderr = err.decode("utf-8", "replace")
    status, reason = _classify(rc, stderr, timed_out, limits)
    visible_err = "\n".join(ln for ln in stderr.splitlines() if not ln.startswith(_MARKER)).strip()
    return ExecResult(status, reason[:_MAX_REASON], seconds, stdout, visible_err)


def run_many(
    sources: Sequence[str], limits: Limits = Limits(), workers: int | None = None
) -> list[ExecResult]:
    """Run many candidate programs in parallel, preserving order.

    Parameters
    ----------
    sources : Sequence[str]
        Programs to run (see :func:`run_program`).
    limits : Limits
        Limits applied to every program.
    workers : int, optional
        Number of programs run concurrently; defaults to the number of CPUs.

    Returns
    -------
    list[ExecResult]
        One result per source, in the same order.
    """
    sources = list(sources)
    if not sources:
        return []
    workers = max(1, min(workers or os.cpu_count() or 1, len(sources)))
    if workers == 1:
        return [run_program(s, limits) for s in sources]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lopa-sbx") as pool:
        return list(pool.map(lambda s: run_program(s, limits), sources))


def pass_at_1(results: Sequence[ExecResult] | Sequence[Sequence[ExecResult]]) -> float:
    """pass@1 of a list of results.

    Parameters
    ----------
    results : sequence
        Either one :class:`ExecResult` per problem, or one sequence of results
        (samples) per problem; with ``n`` samples of which ``c`` pass, the
        unbiased pass@1 estimate of a problem is ``c / n``.

    Returns
    -------
    float
        Mean pass@1 over problems, in [0, 1].

    Raises
    ------
    ValueError
        If ``results`` (or a problem's samples) is empty.
    """
    if len(results) == 0:
        raise ValueError("pass_at_1 needs at least one result")
    scores = []
    for item in results:
        if isinstance(item, ExecResult):
            scores.append(1.0 if item.passed else 0.0)
        else:
            samples = list(item)
            if not samples:
                raise ValueError("a problem has no samples")
            scores.append(sum(r.passed for r in samples) / len(samples))
    return sum(scores) / len(scores)
