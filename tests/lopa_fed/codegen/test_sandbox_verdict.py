"""The sandbox verdict cannot be forged (issue 14, defect 5), and reads outside the run are denied.

A candidate that prints a verdict of its own and ends the process before its failing
assert, by any route, must never be scored ``pass``; nor may one that tampers with
stdout/stderr or the verdict pipe. Every case here ends in a failing ``assert False`` that
the forgery tries to skip.
"""

from __future__ import annotations

import os
import textwrap
import uuid
from pathlib import Path

import pytest

from lopa_fed.codegen import sandbox_child
from lopa_fed.codegen.sandbox import CHILD, Limits, run_program

FAST = Limits(timeout_s=5.0)
OLD_MARKER = "@@LOPA_SANDBOX@@"


def _src(code: str) -> str:
    return textwrap.dedent(code).lstrip("\n")


def _not_pass(code: str, guard: bool = True) -> str:
    r = run_program(_src(code), FAST, guard=guard)
    assert r.status != "pass", r
    return r.status


# ----------------------------------------------------------------------------- early exits
@pytest.mark.parametrize("guard", [True, False], ids=["guarded", "unguarded"])
@pytest.mark.parametrize(
    "exit_call",
    ["posix._exit(0)", "os._exit(0)", "os.kill(os.getpid(), signal.SIGKILL)", "os.kill(os.getpid(), signal.SIGTERM)",
     "os.abort()", "signal.raise_signal(signal.SIGINT)"],
)
def test_marker_on_stderr_then_exit_is_not_a_pass(exit_call, guard):
    """The issue's exploit: the old pass marker on stderr, then end the process before the assert.

    The verdict does not depend on the guard: without it ``os._exit`` really exits, and the
    run is still not a pass.
    """
    status = _not_pass(
        f"""
        import os, posix, signal, sys
        sys.stderr.write("\\n{OLD_MARKER} pass \\n")
        sys.stderr.flush()
        os.write(2, b"\\n{OLD_MARKER} pass \\n")
        {exit_call}
        assert False, "the tests ran"
        """,
        guard=guard,
    )
    assert status in ("error", "fail")


def test_posix_exit_zero_is_an_error_that_says_so():
    r = run_program("import posix\nposix._exit(0)\nassert False\n", FAST, guard=False)
    assert r.status == "error" and "exited before the tests completed" in r.reason, r


@pytest.mark.parametrize("stream", ["sys.stdout", "sys.stderr"])
def test_fake_marker_printed_then_failing_assert_is_a_fail(stream):
    r = run_program(
        _src(
            f"""
            import sys
            print("{OLD_MARKER} pass ", file={stream}, flush=True)
            print("0123456789abcdef0123456789abcdef pass ", file={stream}, flush=True)
            assert 1 == 2
            """
        ),
        FAST,
    )
    assert r.status == "fail" and r.reason == "assert 1 == 2", r
    assert OLD_MARKER in (r.stdout + r.stderr)  # the fake is just output now


def test_closing_or_redirecting_fd_1_and_2_does_not_hide_a_fail():
    r = run_program(
        _src(
            f"""
            import os, sys
            os.dup2(1, 2)
            print("{OLD_MARKER} pass ", flush=True)
            os.close(1)
            os.close(2)
            assert False, "closed"
            """
        ),
        FAST,
    )
    assert r.status == "fail" and "closed" in r.reason, r


def test_writes_to_every_descriptor_do_not_forge_a_pass():
    """Brute force: a fake record (wrong nonce) on fds 3..255, then exit 0 without running the tests."""
    _not_pass(
        f"""
        import os, posix
        for fd in range(3, 256):
            for text in ("{OLD_MARKER} pass \\n", "\\n" + "ab" * 16 + " pass \\n", "pass\\n"):
                try:
                    os.write(fd, text.encode())
                except OSError:
                    pass
        posix._exit(0)
        assert False
        """
    )
    r = run_program(_src("import os\nfor fd in range(3, 256):\n    try:\n        os.close(fd)\n    except OSError:\n"
                         "        pass\nassert False, 'x'\n"), FAST)
    assert r.status == "error" and "verdict pipe is gone" in r.reason, r


@pytest.mark.parametrize("guard", [True, False], ids=["guarded", "unguarded"])
def test_raising_the_verdict_event_itself_is_an_error(guard):
    r = run_program(
        f"import sys\nsys.audit({sandbox_child.VERDICT_EVENT!r}, 'pass', '')\nassert False\n", FAST, guard=guard
    )
    assert r.status == "error" and "raised the verdict event itself" in r.reason, r


def test_swapping_the_harness_names_does_not_turn_a_fail_into_a_pass():
    """``sys`` in the harness's globals replaced by an object whose ``audit`` always says pass."""
    _not_pass(
        """
        import functools, sys
        frame = sys._getframe()
        while frame.f_back is not None:
            frame = frame.f_back
        real = sys
        class FakeSys:
            audit = functools.partial(real.audit, "lopa.sandbox.verdict", "pass", "")
            def __getattr__(self, name):
                return getattr(real, name)
        frame.f_globals["sys"] = FakeSys()
        frame.f_globals["_flush"] = lambda: None
        assert False
        """
    )


def test_rerunning_the_harness_main_is_not_a_pass():
    _not_pass(
        """
        import sys
        main = sys.modules["__main__"].main
        open("empty.py", "w").close()
        sys.argv[1:] = ["empty.py", "0", "0", "1"]
        main()
        assert False
        """
    )


def test_the_nonce_is_nowhere_the_candidate_can_see():
    """Not in argv, the environment, any frame's locals or globals; the nonce pipe is closed."""
    r = run_program(
        _src(
            """
            import os, re, sys
            hexrun = re.compile(r"[0-9a-f]{32}")
            seen = [" ".join(sys.argv), repr(sorted(os.environ.items()))]
            frame = sys._getframe()
            while frame is not None:
                for d in (frame.f_locals, frame.f_globals):
                    seen += [repr(v) for v in d.values() if isinstance(v, (str, bytes))]
                frame = frame.f_back
            assert not any(hexrun.search(s) for s in seen)
            readable = []
            for fd in range(3, 256):
                try:
                    os.read(fd, 1)
                    readable.append(fd)
                except OSError:
                    pass
            assert readable == [], readable
            """
        ),
        FAST,
    )
    assert r.status == "pass", r


@pytest.mark.parametrize(
    "code",
    ["import gc\ngc.get_objects()", "import gc\ngc.get_referrers(print)", "import sys\nsys._current_frames()",
     "import sys\nsys.settrace(lambda *a: None)",
     "import types\n(lambda: 0).__code__.replace(co_name='x')", "open('/proc/self/mem', 'rb')",
     "open(f'/proc/{os.getppid()}/status')"],
)
def test_routes_to_the_nonce_are_denied(code):
    r = run_program(f"import os\n{code}\nprint('REACHED')\n", FAST)
    assert "REACHED" not in r.stdout, r


def test_a_candidate_cannot_add_an_audit_hook():
    """CPython silently drops a hook that an existing hook refuses; the candidate's is never called."""
    code = "import sys\ncalls = []\nsys.addaudithook(lambda *a: calls.append(a))\nopen('x', 'w').close()\nprint(len(calls))\n"
    r = run_program(code, FAST)
    assert r.status == "pass" and r.stdout.strip() == "0", r


# ----------------------------------------------------------------------------- the child module
def test_child_is_run_by_path_and_is_stdlib_only():
    assert Path(CHILD) == Path(sandbox_child.__file__).resolve()
    text = Path(CHILD).read_text()
    assert "lopa_fed" not in text.split('"""', 2)[2]  # imports nothing of the package
    assert text.count(sandbox_child._PASS_TAG) == 1  # exactly one pass site
    r = run_program("import sys\nassert 'lopa_fed' not in sys.modules and sys.flags.isolated\n", FAST)
    assert r.status == "pass", r


def test_a_broken_nonce_pipe_stops_the_harness():
    import subprocess
    import sys

    r_fd, w_fd = os.pipe()
    os.write(w_fd, b"short\n")
    os.close(w_fd)
    proc = subprocess.run(
        [sys.executable, "-I", "-B", CHILD, "/dev/null", "0", str(r_fd), "2"],
        pass_fds=(r_fd,), capture_output=True, text=True, timeout=30,
    )
    os.close(r_fd)
    assert proc.returncode == 2 and "no valid nonce" in proc.stderr


# ----------------------------------------------------------------------------- reads
def test_reads_outside_the_run_directory_are_denied(tmp_path):
    secret = tmp_path / f"answers-{uuid.uuid4().hex}.jsonl"
    secret.write_text("the expected outputs")
    r = run_program(
        _src(
            f"""
            import os
            attempts = {{
                "open": lambda: open({str(secret)!r}).read(),
                "os.open": lambda: os.open({str(secret)!r}, os.O_RDONLY),
                "listdir": lambda: os.listdir({str(tmp_path)!r}),
                "scandir": lambda: list(os.scandir("/")),
                "etc": lambda: open("/etc/hostname").read(),
                "proc": lambda: open("/proc/self/status").read(),
                "via-symlink": lambda: (os.symlink({str(secret)!r}, "lnk"), open("lnk").read()),
                "chdir-then-list": lambda: (os.chdir({str(tmp_path)!r}), os.listdir()),
            }}
            for name, attempt in attempts.items():
                try:
                    attempt()
                    print("ESCAPED", name, flush=True)
                except OSError as exc:
                    print("BLOCKED", name, type(exc).__name__, flush=True)
            """
        ),
        FAST,
    )
    assert r.status == "pass", r
    assert "ESCAPED" not in r.stdout and r.stdout.count("BLOCKED") == 8, r.stdout
    assert "the expected outputs" not in r.stdout + r.stderr


def test_reads_inside_and_of_the_interpreter_still_work():
    r = run_program(
        _src(
            """
            import collections, dataclasses, json, logging, os, platform, tempfile, zoneinfo
            open("data.txt", "w").write("hi")
            assert open("data.txt").read() == "hi" and os.listdir(".") == ["data.txt"]
            P = collections.namedtuple("P", "x y")
            assert P(1, 2).y == 2
            logging.getLogger("candidate").warning("logged")
            assert os.urandom(4) and open(os.devnull).read() == ""
            assert platform.system() == "Linux"
            zoneinfo.ZoneInfo("UTC")
            with tempfile.TemporaryDirectory() as d:
                assert os.listdir(d) == []
            """
        ),
        FAST,
    )
    assert r.status == "pass", r
    assert "logged" in r.stderr
