"""Tests for :mod:`lopa_fed.codegen.sandbox`: limits, containment, classification, the verdict, parallelism."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import sys  # noqa: E402
import textwrap  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

_REPO = Path(__file__).resolve().parents[3]
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

from lopa_fed.codegen.sandbox import (  # noqa: E402
    ExecResult,
    Limits,
    pass_at_1,
    run_many,
    run_program,
    sandbox_features,
)

FAST = Limits(timeout_s=5.0)


def _src(code: str) -> str:
    return textwrap.dedent(code).lstrip("\n")


def _procs_mentioning(text: str) -> list[int]:
    """Live (non-zombie) processes whose command line contains ``text``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().decode("utf-8", "replace")
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmd and state != "Z":
            found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _assert_harness_ok() -> None:
    r = run_program("assert sum(range(10)) == 45\n", FAST)
    assert r.status == "pass", r


@pytest.fixture(scope="module")
def features() -> dict[str, bool]:
    return sandbox_features()


# ----------------------------------------------------------------------------- classification
def test_correct_solution_passes():
    r = run_program("def add(a, b):\n    return a + b\n\nassert add(2, 3) == 5\n", FAST)
    assert r == ExecResult("pass", "", r.seconds, "", "")
    assert r.passed and 0 < r.seconds < 5


def test_wrong_solution_fails_with_the_assertion():
    r = run_program("def add(a, b):\n    return a - b\n\nassert add(2, 3) == 5\n", FAST)
    assert r.status == "fail"
    assert r.reason == "assert add(2, 3) == 5"
    r = run_program("assert 1 == 2, 'custom message'\n", FAST)
    assert r.status == "fail" and "custom message" in r.reason


@pytest.mark.parametrize(
    "code, needle",
    [
        ("def f(:\n", "SyntaxError"),
        ("raise KeyError('nope')\n", "KeyError"),
        ("x = input()\n", "EOFError"),  # stdin is closed
        ("import sys\nsys.exit(0)\nassert False\n", "SystemExit"),  # exiting early never passes
    ],
)
def test_errors_are_classified(code, needle):
    r = run_program(code, FAST)
    assert r.status == "error" and needle in r.reason, r


def test_not_run_as_main_and_environment_scrubbed(monkeypatch):
    monkeypatch.setenv("LOPA_SANDBOX_SECRET", "s3cret")
    r = run_program(
        _src(
            """
            import os, sys
            assert __name__ != "__main__"
            assert "LOPA_SANDBOX_SECRET" not in os.environ
            assert os.environ["HOME"] == os.getcwd()
            assert sys.flags.isolated == 1
            print(sorted(os.environ))
            """
        ),
        FAST,
    )
    assert r.status == "pass", r
    assert "PATH" in r.stdout and "s3cret" not in r.stdout


# ----------------------------------------------------------------------------- time and memory
def test_infinite_loop_times_out():
    t0 = time.monotonic()
    r = run_program("while True:\n    pass\n", Limits(timeout_s=1.5))
    assert r.status == "timeout" and "wall-clock" in r.reason
    assert 1.4 < r.seconds < 3.0 and time.monotonic() - t0 < 4.0


def test_cpu_limit_is_a_timeout():
    r = run_program("while True:\n    pass\n", Limits(timeout_s=20.0, cpu_s=1))
    assert r.status == "timeout" and "SIGXCPU" in r.reason
    assert r.seconds < 6.0


def test_infinite_sleep_with_child_free_timeout():
    r = run_program("import time\ntime.sleep(100)\n", Limits(timeout_s=1.0))
    assert r.status == "timeout" and r.seconds < 2.5


@pytest.mark.parametrize(
    "code",
    [
        "x = bytearray(10**10)\n",
        "x = []\nwhile True:\n    x.append(bytearray(10**6))\n",
        "x = []\nwhile True:\n    x.append(' ' * 10**6)\n",
    ],
    ids=["bytearray", "growing-list", "growing-strings"],
)
def test_memory_bomb_is_stopped_and_harness_survives(code):
    r = run_program(code, Limits(timeout_s=20.0, memory_mb=256))
    assert r.status == "error" and "MemoryError" in r.reason, r
    assert r.seconds < 10
    _assert_harness_ok()


def test_output_is_bounded():
    r = run_program("while True:\n    print('x' * 1000)\n", Limits(timeout_s=1.0, max_output_kb=4))
    assert r.status == "timeout"
    assert 0 < len(r.stdout) <= 4096


def test_file_size_limit():
    r = run_program("open('big.bin', 'wb').write(b'0' * (3 * 2**20))\n", Limits(max_file_mb=1))
    # Python ignores SIGXFSZ, so the write fails with EFBIG instead of killing the process.
    assert r.status == "error" and ("File too large" in r.reason or "SIGXFSZ" in r.reason), r


# ----------------------------------------------------------------------------- processes
def test_fork_bomb_is_contained_by_the_guard():
    r = run_program(
        "import os\nprint(os.path.dirname(os.getcwd()), flush=True)\nwhile True:\n    os.fork()\n", FAST
    )
    assert r.status == "error" and "fork" in r.reason, r
    top = r.stdout.strip()
    assert top and not _procs_mentioning(top) and not os.path.exists(top)
    _assert_harness_ok()


def test_every_process_creation_route_is_blocked():
    r = run_program(
        _src(
            """
            import os, signal, sys

            def escaped(route):
                print("ESCAPED", route, flush=True)

            def child_exit():
                os.kill(os.getpid(), signal.SIGKILL)

            def r_fork():
                if os.fork() == 0:
                    child_exit()
                escaped("fork")

            def r_forkpty():
                if os.forkpty()[0] == 0:
                    child_exit()
                escaped("forkpty")

            def r_system():
                os.system("true")
                escaped("system")

            def r_popen():
                os.popen("true").read()
                escaped("popen")

            def r_spawn():
                os.posix_spawn("/bin/true", ["true"], {})
                escaped("posix_spawn")

            def r_subprocess():
                import subprocess
                subprocess.run(["true"])
                escaped("subprocess")

            def r_multiprocessing():
                import multiprocessing
                p = multiprocessing.Process(target=print)
                p.start()
                p.join()
                escaped("multiprocessing")

            def r_fork_exec():
                import _posixsubprocess
                _posixsubprocess.fork_exec()
                escaped("fork_exec")

            def r_ctypes():
                import ctypes
                if ctypes.CDLL(None).fork() == 0:
                    child_exit()
                escaped("ctypes")

            def r_pty():
                import pty
                if pty.fork()[0] == 0:
                    child_exit()
                escaped("pty")

            def r_exec():
                os.execv("/bin/true", ["true"])

            def r_rlimit():
                import resource
                resource.setrlimit(resource.RLIMIT_NPROC, (10**6, 10**6))
                escaped("setrlimit")

            def r_kill_parent():
                os.kill(os.getppid(), 0)
                escaped("kill")

            for name, fn in list(globals().items()):
                if name.startswith("r_"):
                    try:
                        fn()
                    except BaseException as exc:
                        print("BLOCKED", name, type(exc).__name__, flush=True)
            """
        ),
        FAST,
    )
    assert r.status == "pass", r
    assert "ESCAPED" not in r.stdout, r.stdout
    assert r.stdout.count("BLOCKED") == 13, r.stdout


def test_kernel_pids_limit_without_guard(features):
    """Without the Python guard, the per-run pids cgroup still caps forks (RLIMIT_NPROC does not for root)."""
    if not features["pids_cgroup"]:
        pytest.skip("no writable pids cgroup: only the prelude guard limits processes here")
    src = _src(
        """
        import os, time
        print("TOP", os.path.dirname(os.getcwd()), flush=True)
        for i in range(60):                      # bounded: at most 60 processes even if unconfined
            try:
                pid = os.fork()
            except OSError as exc:
                print("FORKERR", exc.errno, flush=True)
                break
            if pid == 0:
                os.setsid()                      # leave the process group: only the cgroup can find it
                time.sleep(60)
                os._exit(0)
            print("PID", pid, flush=True)
        """
    )
    r = run_program(src, Limits(timeout_s=10.0, max_procs=8), guard=False)
    assert r.status == "pass", r
    pids = [int(line.split()[1]) for line in r.stdout.splitlines() if line.startswith("PID")]
    assert "FORKERR 11" in r.stdout  # EAGAIN from pids.max
    assert len(pids) == 7  # 8 tasks in the cgroup: the candidate + 7 children
    deadline = time.monotonic() + 3
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(p) for p in pids), "a setsid() child survived the run"


def test_real_fork_bomb_without_guard_is_contained(features):
    """``while True: os.fork()`` with only kernel limits: capped, killed at the timeout, nothing leaks."""
    if not features["pids_cgroup"]:
        pytest.skip("no writable pids cgroup: an unguarded fork bomb would not be bounded for root")
    src = _src(
        """
        import os
        print(os.path.dirname(os.getcwd()), flush=True)
        if "lopa_sbx_" not in open("/proc/self/cgroup").read():
            raise SystemExit("refusing: not inside a per-run pids cgroup")
        while True:
            try:
                os.fork()
            except OSError:
                pass
        """
    )
    t0 = time.monotonic()
    r = run_program(src, Limits(timeout_s=1.5, max_procs=8), guard=False)
    assert r.status == "timeout", r
    assert time.monotonic() - t0 < 5
    top = r.stdout.strip().splitlines()[0]
    time.sleep(0.2)
    assert not _procs_mentioning(top)
    _assert_harness_ok()


# ----------------------------------------------------------------------------- files
def test_writes_outside_the_temp_dir_fail(tmp_path):
    outside_dir = Path("/tmp") / f"lopa-outside-{uuid.uuid4().hex}"
    outside_dir.mkdir()
    sentinel = tmp_path / "sentinel.txt"
    sentinel.write_text("keep")
    repo_file = _REPO / f"sandbox_escape_{uuid.uuid4().hex}.txt"
    targets = {
        "outside": outside_dir / "outside",
        "repo": repo_file,
        "copy": outside_dir / "copied",
        "link": outside_dir / "via_link",
        "chdir": outside_dir / "after_chdir",
        "mkdir": outside_dir / "newdir",
    }
    try:
        r = run_program(
            _src(
                f"""
                import os, shutil
                attempts = {{
                    "outside": lambda: open({str(targets["outside"])!r}, "w").write("x"),
                    "repo": lambda: open({str(targets["repo"])!r}, "w").write("x"),
                    "os.open": lambda: os.open({str(targets["outside"])!r}, os.O_WRONLY | os.O_CREAT),
                    "remove": lambda: os.remove({str(sentinel)!r}),
                    "rename": lambda: os.rename({str(sentinel)!r}, "stolen.txt"),
                    "truncate": lambda: os.truncate({str(sentinel)!r}, 0),
                    "chmod": lambda: os.chmod({str(sentinel)!r}, 0),
                    "copy": lambda: shutil.copy({str(sentinel)!r}, {str(targets["copy"])!r}),
                    "mkdir": lambda: os.mkdir({str(targets["mkdir"])!r}),
                    "link": lambda: (os.symlink({str(outside_dir)!r}, "lnk"),
                                     open("lnk/via_link", "w").write("x")),
                    "chdir": lambda: (os.chdir({str(outside_dir)!r}), open("after_chdir", "w").write("x")),
                }}
                for name, attempt in attempts.items():
                    try:
                        attempt()
                        print("ESCAPED", name, flush=True)
                    except OSError as exc:
                        print("BLOCKED", name, type(exc).__name__, flush=True)
                print("CWD", os.path.realpath("."), flush=True)
                """
            ),
            FAST,
        )
        assert r.status == "pass", r
        assert "ESCAPED" not in r.stdout, r.stdout
        assert r.stdout.count("BLOCKED") == 11
        for path in targets.values():
            assert not path.exists(), path
        assert sentinel.read_text() == "keep" and oct(sentinel.stat().st_mode)[-3:] != "000"
    finally:
        for path in (repo_file, targets["outside"], targets["copy"], targets["chdir"]):
            path.unlink(missing_ok=True)
        for path in (targets["mkdir"],):
            if path.exists():
                path.rmdir()
        outside_dir.rmdir()


def test_writes_inside_the_temp_dir_work_and_it_is_removed():
    r = run_program(
        _src(
            """
            import os, tempfile
            with open("out.txt", "w") as fh:
                fh.write("hello")
            os.mkdir("sub")
            os.rename("out.txt", "sub/out.txt")
            with tempfile.NamedTemporaryFile("w", delete=False) as fh:
                fh.write("tmp")
            assert os.path.dirname(fh.name) == os.getcwd()
            open(os.devnull, "w").write("discarded")
            print(os.getcwd())
            """
        ),
        FAST,
    )
    assert r.status == "pass", r
    cwd = r.stdout.strip()
    assert cwd.startswith("/") and not os.path.exists(cwd) and not os.path.exists(os.path.dirname(cwd))


# ----------------------------------------------------------------------------- network
def test_network_connect_fails():
    r = run_program(
        _src(
            """
            import socket, urllib.request
            attempts = {
                "create_connection": lambda: socket.create_connection(("1.1.1.1", 80), timeout=1),
                "raw": lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM).connect(("1.1.1.1", 80)),
                "dns": lambda: socket.getaddrinfo("example.com", 80),
                "urllib": lambda: urllib.request.urlopen("http://example.com", timeout=1),
            }
            for name, attempt in attempts.items():
                try:
                    attempt()
                    print("ESCAPED", name, flush=True)
                except Exception as exc:
                    print("BLOCKED", name, type(exc).__name__, flush=True)
            """
        ),
        FAST,
    )
    assert r.status == "pass", r
    assert "ESCAPED" not in r.stdout and r.stdout.count("BLOCKED") == 4, r.stdout
    r = run_program("import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=1)\n", FAST)
    assert r.status == "error" and "socket" in r.reason


def test_network_namespace_without_guard(features):
    if not (features["netns"] and os.geteuid() == 0):
        pytest.skip("unshare(CLONE_NEWNET) needs CAP_SYS_ADMIN")
    r = run_program(
        _src(
            """
            import os, socket
            print(os.readlink("/proc/self/ns/net"))
            try:
                socket.create_connection(("1.1.1.1", 53), timeout=1)
                print("CONNECTED")
            except OSError as exc:
                print("NOCONNECT", exc.errno)
            """
        ),
        FAST,
        guard=False,
    )
    assert r.status == "pass", r
    netns, outcome = r.stdout.split()[:2]
    assert netns != os.readlink("/proc/self/ns/net")  # a fresh, empty network namespace
    assert outcome == "NOCONNECT"


# ----------------------------------------------------------------------------- parallel + metric
def test_run_many_preserves_order_and_runs_in_parallel():
    sources = [f"import time\ntime.sleep(0.8)\nassert {i} % 2 == 0, 'odd {i}'\n" for i in range(4)]
    t0 = time.monotonic()
    results = run_many(sources, FAST, workers=4)
    elapsed = time.monotonic() - t0
    assert [r.status for r in results] == ["pass", "fail", "pass", "fail"]
    assert "odd 1" in results[1].reason and "odd 3" in results[3].reason
    assert elapsed < 0.8 * 4 * 0.8, f"took {elapsed:.2f}s: not parallel"
    assert run_many([]) == []


def test_pass_at_1():
    p, f = ExecResult("pass", "", 0.1), ExecResult("fail", "x", 0.1)
    assert pass_at_1([p, f, f, p]) == 0.5
    assert pass_at_1([[p, f], [p, p]]) == 0.75
    with pytest.raises(ValueError):
        pass_at_1([])
