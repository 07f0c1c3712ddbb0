"""The program that runs one sandboxed candidate (the child side of :mod:`.sandbox`).

The parent runs this file **by path** as a script, ``python -I -B sandbox_child.py
PROG GUARD NONCE_FD VERDICT_FD``, in a fresh temporary working directory, so it must stay
stdlib-only and self-contained: it never imports ``lopa_fed`` (``-I`` keeps the repository
off ``sys.path`` anyway).

Arguments
---------
PROG
    Path of the candidate program (``<top>/candidate.py``; the working directory is
    ``<top>/work``).
GUARD
    ``"1"``: install the in-process guard (:func:`install_guard`); ``"0"`` exists only so
    the tests can exercise the kernel-level limits on their own.
NONCE_FD
    Read end of a pipe holding the per-run random nonce; read to EOF and closed before
    the candidate's code runs.
VERDICT_FD
    Write end of the verdict pipe. The only thing ever written there by the harness is one
    record ``"\\n<nonce> <kind> <reason>\\n"`` with ``kind`` in ``pass``/``fail``/``error``.

How the verdict cannot be forged
--------------------------------
The verdict is written by an audit hook (:func:`install_verdict`) registered *before* the
candidate runs; Python code cannot remove an audit hook. Only that hook knows the nonce: it
is read from ``NONCE_FD`` inside :func:`install_verdict`, whose frame is gone when the
candidate starts, and lives on only in the hook's closure. The hook is not reachable from
the candidate's frames, globals or modules, and with the guard on the routes that would
reach it are denied (``gc.get_objects``/``get_referrers``/``get_referents``,
``sys._current_frames``, tracing/profiling hooks, adding audit hooks, ``ctypes``,
sub-interpreters, building code objects, and reading ``/proc``).

:func:`main` asks for a verdict by raising the audit event :data:`VERDICT_EVENT`. The hook
grants ``pass`` only when that event comes from :func:`main`'s own frame, on the main
thread, at the bottom of the stack, at the **one line** tagged as the pass site, which
follows ``exec(candidate)`` in a ``try ... else`` block and so is reached only when the
candidate's code returned normally. The kind is taken from where the event was raised,
never from its arguments, so swapping names in :func:`main`'s globals cannot turn a
``fail`` into a ``pass``. The event raised from anywhere else (the candidate's own code, a
re-run of :func:`main`, a thread) yields an ``error`` verdict. After writing the record the
hook ends the process at once (``os._exit``), so nothing runs after a verdict.

So a candidate that exits early (``sys.exit``, ``os._exit``, ``posix._exit``,
``os.kill(os.getpid(), ...)``), closes or redirects fd 1/2, or prints a fake verdict
anywhere produces *no* valid record: the parent scores it ``error`` (or ``fail``). What this
does not stop (a program written to attack the harness) is in :mod:`.sandbox`, "Threat model".
"""

from __future__ import annotations

import _thread
import builtins
import os
import sys
import types

#: Audit event :func:`main` raises to ask the verdict hook for a verdict.
VERDICT_EVENT = "lopa.sandbox.verdict"
_PASS_TAG = "# <- the pass" + " site"  # split so this line does not carry the tag itself
_MAX_REASON = 500
_MAX_NONCE = 1024

_DENY_EXACT = frozenset(
    {
        "os.fork", "os.forkpty", "os.system", "os.exec", "os.spawn", "os.posix_spawn",
        "subprocess.Popen", "resource.setrlimit", "resource.prlimit", "signal.pthread_kill",
        "socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg", "socket.getaddrinfo",
        "socket.gethostbyname", "socket.gethostbyaddr", "socket.gethostname", "socket.getnameinfo",
        "socket.sethostname", "urllib.Request", "webbrowser.open", "os.chroot", "os.setns", "os.unshare",
        # routes to the verdict hook's closure (the nonce), or around every audit hook
        "gc.get_objects", "gc.get_referrers", "gc.get_referents", "sys._current_frames",
        "sys._current_exceptions", "sys.settrace", "sys.setprofile", "sys.addaudithook",
        "cpython.PyInterpreterState_New", "code.__new__",
    }
)
_DENY_PREFIX = (
    "ctypes.", "http.client.", "ftplib.", "smtplib.", "poplib.", "imaplib.", "nntplib.", "telnetlib.",
    "sys.monitoring.", "sys._settraceallthreads", "sys._setprofileallthreads",
)
_DENY_IMPORTS = frozenset(
    {"ctypes", "_ctypes", "_xxsubinterpreters", "_interpreters", "_testcapi", "_testinternalcapi"}
)
#: event -> ((index of a path argument, index of its dir_fd argument or None), ...)
_MUTATING = {
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
#: events that read a directory listing: event -> index of the path argument
_LISTING = {"os.listdir": 0, "os.scandir": 0}
_DENIED_OS = (
    "fork", "forkpty", "system", "popen", "posix_spawn", "posix_spawnp", "execv", "execve", "execl",
    "execle", "execlp", "execlpe", "execvp", "execvpe", "spawnv", "spawnve", "spawnl", "spawnle",
    "spawnlp", "spawnlpe", "spawnvp", "spawnvpe", "_exit", "setuid", "setgid",
)
#: files any candidate may open outside its directory (exact names, before resolving links)
_ALLOWED_FILES = frozenset({"/dev/null", "/dev/stdout", "/dev/stderr", "/dev/stdin"})
#: extra read-only files and trees: devices, time-zone data
_READ_ROOTS = ("/dev/zero", "/dev/urandom", "/dev/random", "/etc/localtime", "/usr/share/zoneinfo")
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC


class SandboxViolation(PermissionError):
    """An operation the guard denies (a ``PermissionError``, so ``except OSError`` sees it)."""


def _fatal(message: str) -> None:
    """The harness itself cannot run: say why on stderr and exit 2 (the parent reports ``error``)."""
    os.write(2, f"sandbox harness: {message}\n".encode("utf-8", "replace"))
    os._exit(2)


def _one_line(text: str) -> str:
    return " ".join(text.split())[:_MAX_REASON]


# ------------------------------------------------------------------------------------------ verdict
def _read_nonce(fd: int) -> bytes:
    """Read the nonce pipe to EOF, close it, and check the nonce (>= 32 hex digits)."""
    data = b""
    while len(data) <= _MAX_NONCE:
        chunk = os.read(fd, 256)
        if not chunk:
            break
        data += chunk
    os.close(fd)
    nonce = data.strip()
    if len(nonce) < 32 or len(nonce) > _MAX_NONCE or any(c not in b"0123456789abcdef" for c in nonce):
        _fatal("no valid nonce on the nonce pipe")
    return nonce


def _pass_line() -> int:
    """Line number of the single statement of :func:`main` tagged as the pass site."""
    with open(__file__, encoding="utf-8") as fh:
        hits = [n for n, line in enumerate(fh, 1) if line.rstrip().endswith(_PASS_TAG)]
    if len(hits) != 1:
        _fatal(f"expected one pass site in {__file__}, found {len(hits)}")
    return hits[0]


def install_verdict(nonce_fd: int, verdict_fd: int, main_code: types.CodeType) -> None:
    """Register the audit hook that alone writes the verdict record, then exits.

    Parameters
    ----------
    nonce_fd : int
        Read end of the nonce pipe; read and closed here.
    verdict_fd : int
        Write end of the verdict pipe.
    main_code : code
        ``main.__code__``: the only code whose frame may ask for a verdict.
    """
    prefix = b"\n" + _read_nonce(nonce_fd) + b" "
    pass_line = _pass_line()
    getframe, get_ident, write, exit_ = sys._getframe, _thread.get_ident, os.write, os._exit
    str_, type_, main_thread, verdict_event = str, type, _thread.get_ident(), VERDICT_EVENT

    def verdict_hook(event: str, args: tuple) -> None:
        # Runs for every audit event: touch nothing the candidate controls before the checks.
        if event != verdict_event:
            return
        caller = getframe(1)
        genuine = (
            caller.f_code is main_code
            and get_ident() == main_thread
            and caller.f_back is not None
            and caller.f_back.f_back is None
        )
        if genuine and caller.f_lineno == pass_line:
            kind, reason = "pass", ""
        elif genuine and len(args) == 2 and type_(args[0]) is str_ and args[0] in ("fail", "error"):
            kind, reason = args[0], args[1] if type_(args[1]) is str_ else ""
        elif genuine:
            kind, reason = "error", "sandbox: malformed verdict request"
        else:
            kind, reason = "error", "sandbox: the candidate raised the verdict event itself"
        try:
            write(verdict_fd, prefix + kind.encode() + b" " + reason.encode("utf-8", "replace") + b"\n")
        except OSError:
            try:
                write(2, b"\nsandbox: the verdict pipe is gone (closed by the candidate?)\n")
            except OSError:
                pass
            exit_(1)
        exit_(0 if kind == "pass" else 1)

    sys.addaudithook(verdict_hook)


# ------------------------------------------------------------------------------------------ guard
def _read_roots(top: str) -> tuple[str, ...]:
    """Real paths a guarded candidate may read: its run directory, the interpreter's import
    path (stdlib, lib-dynload, site-packages) and executable, devices and time-zone data."""
    roots = [top, sys.executable, *sys.path, *_READ_ROOTS]
    return tuple(sorted({os.path.realpath(p) for p in roots if p and os.path.exists(p)}))


def _under(path: str, roots: tuple[str, ...]) -> bool:
    return any(path == r or path.startswith(r.rstrip(os.sep) + os.sep) for r in roots)


def install_guard(root: str, top: str) -> None:
    """Deny process creation, network, introspection of the harness, and file access outside
    the run directory (writes: outside ``root``; reads: outside :func:`_read_roots`).

    Parameters
    ----------
    root : str
        Real path of the working directory (where writes are allowed).
    top : str
        Real path of the run directory (``root``'s parent, holding the program).
    """
    import _posixsubprocess
    import socket

    readlink, realpath, isabs, join = os.readlink, os.path.realpath, os.path.isabs, os.path.join
    fspath, fsdecode, getpid, getpgid = os.fspath, os.fsdecode, os.getpid, os.getpgid
    read_roots, write_roots = _read_roots(top), (root,)

    def allowed(path, roots, dir_fd=None, is_open=False) -> bool:
        if isinstance(path, int):
            if is_open:
                return True  # wrapping an already-open descriptor
            path = readlink(f"/proc/self/fd/{path}")
        p = fsdecode(fspath(path))
        if p in _ALLOWED_FILES:
            return True
        if isinstance(dir_fd, int) and dir_fd >= 0 and not isabs(p):
            p = join(readlink(f"/proc/self/fd/{dir_fd}"), p)
        r = realpath(p)
        return r in _ALLOWED_FILES or _under(r, roots)

    def check(event, path, roots=write_roots, dir_fd=None, is_open=False) -> None:
        try:
            ok = path is None or allowed(path, roots, dir_fd, is_open)
        except Exception:  # noqa: BLE001 - anything odd about a path is a denial
            ok = False
        if not ok:
            what = "write" if roots is write_roots else "read"
            raise SandboxViolation(f"sandbox: {event} ({what}) outside the working directory denied: {path!r}")

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            writes = (isinstance(flags, int) and flags & _WRITE_FLAGS) or (
                isinstance(mode, str) and any(c in mode for c in "wax+")
            )
            check(event, path, write_roots if writes else read_roots, is_open=True)
        elif event in _LISTING:
            path = args[_LISTING[event]] if args else None
            check(event, "." if path is None else path, read_roots)
        elif event in _MUTATING:
            for pi, di in _MUTATING[event]:
                if pi < len(args):
                    check(event, args[pi], dir_fd=args[di] if di is not None and di < len(args) else None)
        elif event in _DENY_EXACT or event.startswith(_DENY_PREFIX):
            raise SandboxViolation(f"sandbox: {event} is disabled")
        elif event == "import" and args[0] in _DENY_IMPORTS:
            raise ImportError(f"sandbox: {args[0]} is disabled")
        elif event == "os.kill":
            if args[0] not in (0, getpid()):
                raise SandboxViolation("sandbox: signalling other processes is disabled")
        elif event == "os.killpg":
            if args[0] != getpgid(0):
                raise SandboxViolation("sandbox: signalling other process groups is disabled")

    def deny(what: str):
        def blocked(*args, **kwargs):
            raise SandboxViolation(f"sandbox: {what} is disabled")

        return blocked

    for name in _DENIED_OS:
        if hasattr(os, name):
            setattr(os, name, deny("os." + name))
    _posixsubprocess.fork_exec = deny("_posixsubprocess.fork_exec")
    socket.socket.connect = deny("socket.connect")
    socket.socket.connect_ex = deny("socket.connect_ex")
    for name in ("create_connection", "create_server", "getaddrinfo", "gethostbyname",
                 "gethostbyname_ex", "gethostbyaddr"):
        setattr(socket, name, deny("socket." + name))
    for name in _DENY_IMPORTS:
        sys.modules[name] = None
    sys.addaudithook(hook)


# ------------------------------------------------------------------------------------------ running
def _assert_reason(exc: AssertionError, src: str) -> str:
    """``"<failing assert line> -- <message>"`` for an assertion raised in the candidate."""
    line, tb = 0, exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<candidate>":
            line = tb.tb_lineno
        tb = tb.tb_next
    lines = src.splitlines()
    text = lines[line - 1].strip() if 0 < line <= len(lines) else ""
    msg = str(exc)
    reason = text or "AssertionError"
    return f"{reason} -- {msg}" if msg else reason


def _describe(exc: BaseException) -> str:
    try:
        return f"{type(exc).__name__}: {exc}"
    except BaseException:  # noqa: BLE001 - a candidate exception whose str() fails
        return type(exc).__name__


def _failure(exc: BaseException, src: str, namespace: dict) -> tuple[str, str]:
    """``(kind, reason)`` of a candidate that raised ``exc``: ``fail`` for an assertion, else ``error``."""
    try:
        if isinstance(exc, AssertionError):
            return "fail", _one_line(_assert_reason(exc, src))
        if isinstance(exc, MemoryError):
            namespace.clear()  # free the candidate's memory before building any string
            return "error", "MemoryError"
        if isinstance(exc, SystemExit):
            return "error", _one_line(f"SystemExit({exc.code!r}) raised before the tests completed")
        return "error", _one_line(_describe(exc))
    except BaseException:  # noqa: BLE001 - e.g. an exception whose __str__ raises
        return "error", _one_line(type(exc).__name__)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:  # noqa: BLE001 - the candidate may have broken its streams
            pass


def main() -> None:
    """Run the candidate and raise :data:`VERDICT_EVENT` once; the verdict hook then exits."""
    if len(sys.argv) != 5:
        _fatal("usage: sandbox_child.py PROG GUARD NONCE_FD VERDICT_FD")
    prog_path, guard, nonce_fd, verdict_fd = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3]), int(sys.argv[4])
    with open(prog_path, encoding="utf-8") as fh:
        src = fh.read()
    del sys.argv[1:]
    audit, real_exit = sys.audit, os._exit
    install_verdict(nonce_fd, verdict_fd, sys._getframe().f_code)
    if guard:
        install_guard(os.path.realpath(os.getcwd()), os.path.realpath(os.path.dirname(prog_path)))
    try:
        code = compile(src, "<candidate>", "exec")
    except (SyntaxError, ValueError) as exc:
        audit(VERDICT_EVENT, "error", _one_line(f"{type(exc).__name__}: {exc}"))
    module = types.ModuleType("__candidate__")
    module.__builtins__ = builtins
    sys.modules["__candidate__"] = module
    try:
        exec(code, module.__dict__)
    except BaseException as exc:  # noqa: BLE001 - every outcome but a normal return is fail/error
        kind, reason = _failure(exc, src, module.__dict__)
        _flush()
        audit(VERDICT_EVENT, kind, reason)
    else:
        _flush()
        audit(VERDICT_EVENT, "pass", "")  # <- the pass site
    real_exit(1)  # not reached: the verdict hook exits, so getting here means no verdict


if __name__ == "__main__":
    main()
