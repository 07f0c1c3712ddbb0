"""Execution-based scoring of generated code (pass@1) in a constrained subprocess.

Every candidate runs in its own ``python -I -B`` child: :mod:`.sandbox_child`, run by file
path (stdlib only, so ``-I`` holds and nothing of ``lopa_fed`` is imported there).

* **Wall clock.** The child leads a new session; on expiry its process group is killed
  with ``SIGKILL``.  The group and the pids cgroup are also swept after *every* run.
* **Kernel limits** (:mod:`.cgroup`, set in ``preexec_fn``): ``RLIMIT_AS``, ``RLIMIT_CPU``,
  ``RLIMIT_NPROC``, ``RLIMIT_FSIZE``, ``RLIMIT_NOFILE``, ``RLIMIT_CORE=0``; a per-run pids
  cgroup (``pids.max = max_procs``) when one is writable, because Linux does not enforce
  ``RLIMIT_NPROC`` for root (ten forks succeeded under ``RLIMIT_NPROC=3`` here); a fresh,
  empty network namespace when ``unshare(CLONE_NEWNET)`` is permitted.
* **Files and I/O.** A fresh temporary working directory (also ``HOME``/``TMPDIR``),
  removed afterwards; stdin ``/dev/null``; bounded stdout/stderr tails
  (``Limits.max_output_kb``); a scrubbed environment.
* **Guard** (in the child, before the candidate: an audit hook, which Python code cannot
  remove, plus patched functions): denies process creation (``fork``/``exec*``/``spawn*``/
  ``system``/``subprocess``/``multiprocessing``/``fork_exec``), ``ctypes``,
  ``setrlimit``, signals to other processes, sockets / DNS, file-system mutation
  outside the working directory, and reads / directory listings outside the run
  directory, the interpreter's import path (stdlib, ``lib-dynload``, ``site-packages``),
  a few devices and the time-zone data (so ``/proc`` is not readable either).

**The verdict.**  A run is ``pass`` only if a record ``<nonce> pass`` arrives on a
dedicated verdict pipe and the child exits 0.  The nonce is random per run
(:mod:`secrets`), handed over on a second pipe that the child reads and closes before
the candidate runs, and never put in argv, the environment, a file or stdout/stderr;
inside the child only an audit hook holds it, and that hook grants ``pass`` only to the
statement after the candidate's ``exec`` returned normally (:mod:`.sandbox_child`).
stdout/stderr are never parsed.

Threat model
------------
The sandbox scores **model-generated code**: accidental infinite loops, memory blow-ups,
fork loops, stray writes, and programs that by accident or a cheap trick end before
their tests fail.  Defended:

* verdict forgery without reading the harness's memory: exiting early (``sys.exit``,
  ``os._exit``, ``posix._exit``, ``os.kill(os.getpid(), ...)``, ``os.abort``), closing or
  redirecting fd 1/2, fake verdicts on stdout/stderr, writing to or closing the verdict
  pipe, raising the verdict event itself, re-running the harness: never ``pass``;
* with the guard, the cheap routes to the nonce: ``gc`` walks, ``sys._current_frames``,
  trace/profile and new audit hooks, ``ctypes``, sub-interpreters, new code objects,
  ``/proc/<pid>/mem`` and other processes' ``/proc/<pid>/fd`` (another run's pipes);
* resource exhaustion and stray processes (kernel limits); network access;
  writes outside the working directory;
* reads outside the run directory and the interpreter: the data set's answers, the
  repository, credentials and other runs' files are out of reach (a decision of
  issue 14; before, any file could be read).

Not defended (the guard is **best-effort**; the harness runs as root here, so file
permissions protect nothing):

* a program written to attack the harness: it can reach the nonce by walking frames from
  a signal handler that fires while the verdict hook runs, or through crafted bytecode
  (``marshal``), a CPython bug or an extension module, and then forge a verdict or undo
  the guard.  File confinement, the network block (where no namespace could be made)
  and the nonce depend on the guard; only the kernel limits do not.  There is no mount
  namespace;
* answers that game the check's semantics (e.g. a CruxEval answer whose ``__eq__`` is
  always true): the check program is the task's (``CodeTask.build_check``);
* runs with ``guard=False``, which exist only to test the kernel limits.

Run hostile code in a VM or container, not here.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from . import cgroup

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

#: The child program, run as a script by file path (the parent never imports it).
CHILD = str(Path(__file__).resolve().with_name("sandbox_child.py"))
_MAX_REASON = 500
_VERDICT_CAP = 64 * 1024
_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONHASHSEED": "0",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


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



def sandbox_features() -> dict[str, bool]:
    """Which kernel-level protections this environment has (see :func:`.cgroup.features`)."""
    return cgroup.features()


# --------------------------------------------------------------------------------------------------
# Running one program
# --------------------------------------------------------------------------------------------------
def _verdict(data: bytes, nonce: str) -> tuple[str, str] | None:
    """The first ``<nonce> <kind> <reason>`` record on the verdict pipe, or None.

    Lines without the run's nonce (anything the candidate wrote there) are ignored.
    """
    prefix = nonce.encode("ascii") + b" "
    for line in data.split(b"\n"):
        if line.startswith(prefix):
            kind, _, reason = line[len(prefix) :].decode("utf-8", "replace").partition(" ")
            return kind, reason
    return None


def _classify(
    rc: int, verdict: tuple[str, str] | None, stderr: str, timed_out: bool, limits: Limits
) -> tuple[str, str]:
    if timed_out:
        return "timeout", f"wall-clock timeout after {limits.timeout_s:g} s"
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
    if verdict is not None:
        kind, reason = verdict
        if kind == "pass" and rc == 0:
            return "pass", ""
        if kind in ("fail", "error"):
            return kind, reason
    if rc == 0:
        return "error", "candidate exited before the tests completed"
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    return "error", (lines[-1][:_MAX_REASON] if lines else f"exit code {rc}")


def _spawn(prog: str, workdir: str, guard: bool, preexec: Callable[[], None]) -> tuple[subprocess.Popen, int, str]:
    """Start the child with a fresh nonce; returns (process, verdict read fd, nonce).

    The nonce goes in through a pipe that holds it and is closed for writing before the
    child starts; the parent's copies of the child's pipe ends are closed on return.
    """
    nonce = secrets.token_hex(16)
    nonce_r, nonce_w = os.pipe()
    verdict_r, verdict_w = os.pipe()
    try:
        os.write(nonce_w, nonce.encode("ascii") + b"\n")
        os.close(nonce_w)
        nonce_w = -1
        argv = [sys.executable, "-I", "-B", CHILD, prog, "1" if guard else "0", str(nonce_r), str(verdict_w)]
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=workdir,
            env={**_ENV, "HOME": workdir, "TMPDIR": workdir},
            start_new_session=True,
            preexec_fn=preexec,
            close_fds=True,
            pass_fds=(nonce_r, verdict_w),
        )
    except BaseException:
        os.close(verdict_r)
        raise
    finally:
        for fd in (nonce_r, nonce_w, verdict_w):
            if fd >= 0:
                os.close(fd)
    return proc, verdict_r, nonce


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
        Install the in-process guard (default).  ``False`` exists only to
        test the kernel-level limits on their own; never score with it.

    Returns
    -------
    ExecResult
        ``pass`` if the program ran to completion (a nonce-bearing ``pass`` record on
        the verdict pipe and exit code 0), ``fail`` on an ``AssertionError`` (reason:
        the assert line), ``timeout`` on the wall clock or CPU limit, ``error``
        otherwise (exception line, signal, or no verdict at all).
    """
    cap = max(1, int(limits.max_output_kb)) * 1024
    top = tempfile.mkdtemp(prefix="lopa-sbx-")
    workdir = os.path.join(top, "work")
    os.mkdir(workdir)
    prog = os.path.join(top, "candidate.py")
    with open(prog, "w", encoding="utf-8") as fh:
        fh.write(source)
    group = cgroup.CGROUPS.create(limits.max_procs)
    proc: subprocess.Popen | None = None
    verdict_fd = -1

    def sweep() -> None:
        if proc is not None:
            cgroup.kill_group(proc.pid)
        if group is not None:
            cgroup.CGROUPS.kill_all(group)

    rlim = cgroup.rlimits(limits.memory_mb, limits.cpu_s, limits.max_procs, limits.max_file_mb)
    preexec = cgroup.make_preexec(rlim, group, cgroup.unshare_fn())
    start = time.monotonic()
    try:
        proc, verdict_fd, nonce = _spawn(prog, workdir, guard, preexec)
        fds = {proc.stdout.fileno(): cap, proc.stderr.fileno(): cap, verdict_fd: _VERDICT_CAP}
        (out, err, verdict), timed_out = cgroup.collect(proc, fds, start + limits.timeout_s, sweep)
        if timed_out:
            cgroup.kill_group(proc.pid)
        try:
            rc = proc.wait(timeout=max(1.0, limits.timeout_s))
        except subprocess.TimeoutExpired:
            cgroup.kill_group(proc.pid)
            rc = proc.wait()
            timed_out = True
        seconds = time.monotonic() - start
    finally:
        _cleanup(proc, verdict_fd, group, top)
    stdout = out.decode("utf-8", "replace")
    stderr = err.decode("utf-8", "replace")
    status, reason = _classify(rc, _verdict(verdict, nonce), stderr, timed_out, limits)
    return ExecResult(status, reason[:_MAX_REASON], seconds, stdout, stderr.strip())


def _cleanup(proc: subprocess.Popen | None, verdict_fd: int, group: str | None, top: str) -> None:
    """Kill whatever is left of a run, close its pipes, remove its cgroup and directory."""
    if proc is not None:
        cgroup.kill_group(proc.pid)  # anything left in the session's group
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    if verdict_fd >= 0:
        os.close(verdict_fd)
    if group is not None:
        cgroup.CGROUPS.kill_all(group)  # processes that escaped the group (setsid)
        cgroup.CGROUPS.remove(group)
    shutil.rmtree(top, ignore_errors=True)


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
