"""Start Flower's own runtime processes on loopback and run the app with ``flwr run``.

Used by ``lopa-fed simulate`` (a SuperLink in simulation mode) and ``lopa-fed
deploy-local`` (a SuperLink plus N SuperNodes). Each launch gets:

* a private ``FLWR_HOME`` (``<out>/flwr-home``) whose ``config.toml`` holds one
  connection to our SuperLink, so ``~/.flwr`` and its background local SuperLink on
  127.0.0.1:39091 are never touched;
* free ports on 127.0.0.1 (one per SuperLink, one per SuperNode);
* ``--disable-runtime-dependency-installation`` on the SuperLink (and
  ``FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1`` in the environment): otherwise the
  SuperLink runs ``uv sync`` on ``[project].dependencies`` for every run, which would try to
  download and install torch into a fresh environment;
* the run-config overrides in a TOML file passed to ``flwr run --run-config``.

Every process started here is recorded and stopped by its PID (SIGTERM, then SIGKILL
for it and its process group) in :meth:`Processes.stop_all`.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .metrics import read_rounds

CONNECTION = "lopa"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def project_dir() -> Path:
    """The Flower app directory (the checkout holding ``pyproject.toml`` with ``[tool.flwr.app]``).

    Raises
    ------
    FileNotFoundError
        The package is not installed from a checkout (editable install).
    """
    here = Path(__file__).resolve().parent.parent
    py = here / "pyproject.toml"
    if py.is_file() and "[tool.flwr.app]" in py.read_text():
        return here
    raise FileNotFoundError(
        f"no pyproject.toml with [tool.flwr.app] next to {here}; run from a clone (pip install -e .) or pass --app-dir"
    )


def flower_env(flwr_home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for Flower commands: venv on PATH, private FLWR_HOME, no runtime installs, offline hub."""
    env = dict(os.environ)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env["FLWR_HOME"] = str(flwr_home)
    env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    env["FLWR_DISABLE_UPDATE_CHECK"] = "1"
    env["FLWR_TELEMETRY_ENABLED"] = "0"
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.update(extra or {})
    return env


def write_connection(flwr_home: Path, address: str, name: str = CONNECTION) -> Path:
    """Write ``$FLWR_HOME/config.toml`` with one insecure connection ``name`` to ``address``."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    path = flwr_home / "config.toml"
    path.write_text(
        f'[superlink]\ndefault = "{name}"\n\n[superlink.{name}]\naddress = "{address}"\ninsecure = true\n'
    )
    return path


def write_run_config(path: Path, overrides: Mapping[str, Any]) -> Path:
    """Write run-config overrides as TOML (for ``flwr run --run-config FILE``); scalars only."""
    import json

    lines = []
    for key, value in overrides.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, (int, float)):
            text = repr(value)
        elif isinstance(value, str):
            text = json.dumps(value)  # JSON string escapes are valid TOML basic-string escapes
        else:
            raise TypeError(f"run-config value for {key!r} must be a bool, number or string, got {type(value).__name__}")
        lines.append(f"{json.dumps(str(key))} = {text}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


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
        while time.time() < wait_until and any(_alive(x) for pids in spawned.values() for x in pids):
            time.sleep(0.2)
        for owner, pids in spawned.items():
            for pid in pids:
                if _alive(pid):
                    try:
                        os.kill(pid, signal.SIGKILL)
                        notes.append(f"killed leftover descendant pid {pid} of pid {owner}")
                    except ProcessLookupError:
                        pass
        return notes


def _alive(pid: int) -> bool:
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
            raise RuntimeError(f"process exited with code {proc.returncode} while starting:\n{tail}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=0.5).is_success:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"nothing answered on 127.0.0.1:{port} within {timeout:.0f}s")


@dataclass
class LaunchResult:
    """Outcome of a launch."""

    returncode: int
    seconds: float
    out_dir: Path
    rounds: list[dict[str, Any]]
    logs: dict[str, Path]
    notes: list[str] = field(default_factory=list)

    @property
    def completed(self) -> bool:
        """The run wrote ``status: completed`` in ``run.json``."""
        import json

        p = self.out_dir / "run.json"
        return p.is_file() and json.loads(p.read_text()).get("status") == "completed"


def complete_run_config(run_config: Mapping[str, Any], out_dir: Path) -> dict[str, Any]:
    """``run_config`` with absolute ``output-dir`` (= ``out_dir``) and ``data-dir`` filled in.

    The apps run inside ``$FLWR_HOME/apps/...`` with the SuperLink's or SuperNode's working
    directory, where the checkout-relative data lookup cannot work; so the data directory is
    resolved here, in the launching process.
    """
    from lopa_fed.tasks import resolve_data_dir

    cfg = dict(run_config)
    cfg["output-dir"] = str(Path(out_dir).resolve())
    if not cfg.get("data-dir"):
        found = resolve_data_dir(None)
        if found is not None:
            cfg["data-dir"] = str(found.resolve())
    else:
        cfg["data-dir"] = str(Path(str(cfg["data-dir"])).expanduser().resolve())
    if cfg.get("private-dir"):
        cfg["private-dir"] = str(Path(str(cfg["private-dir"])).expanduser().resolve())
    return cfg


def _flwr_run(
    procs: Processes,
    app_dir: Path,
    run_config_file: Path,
    env: Mapping[str, str],
    log_path: Path,
    out_dir: Path,
    num_rounds: int,
    federation_config: str | None,
    timeout: float,
    on_round: Callable[[dict[str, Any], Processes], None] | None,
) -> int:
    cmd = ["flwr", "run", str(app_dir), CONNECTION, "--stream", "--run-config", str(run_config_file)]
    if federation_config:
        cmd += ["--federation-config", federation_config]
    proc = procs.start("flwr-run", cmd, log_path, env, cwd=app_dir)
    seen = 0
    deadline = time.time() + timeout
    while proc.poll() is None:
        if time.time() > deadline:
            raise TimeoutError(f"flwr run did not finish within {timeout:.0f}s (log: {log_path})")
        rounds = read_rounds(out_dir)
        for rec in rounds[seen:]:
            if on_round is not None:
                on_round(rec, procs)
        seen = max(seen, len(rounds))
        time.sleep(0.5)
    for rec in read_rounds(out_dir)[seen:]:
        if on_round is not None:
            on_round(rec, procs)
    return int(proc.returncode)


class _Terminated(SystemExit):
    """Raised by the SIGTERM handler so that ``finally`` blocks stop every started process (exit code 143)."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise _Terminated(128 + signum)


def _launch(
    run_config: Mapping[str, Any],
    out_dir: Path,
    app_dir: Path | None,
    superlink_flags: list[str],
    timeout: float,
    on_round: Callable[[dict[str, Any], Processes], None] | None,
    fed_cfg: str | None = None,
    nodes: int = 0,
) -> LaunchResult:
    """Start a private SuperLink (plus ``nodes`` SuperNodes), run ``flwr run``, and stop every process by PID.

    SIGTERM is turned into an exception while this runs (main thread only), so a terminated
    caller still stops the SuperLink, SuperNodes and Ray workers it started.
    """
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    app_dir = app_dir or project_dir()
    home = out_dir / "flwr-home"
    env = flower_env(home)
    port = free_port()
    write_connection(home, f"127.0.0.1:{port}")
    logs = {"superlink": out_dir / "logs" / "superlink.log", "flwr-run": out_dir / "logs" / "flwr-run.log"}
    procs = Processes()
    t0 = time.time()
    rc = -1
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if main else None
    try:
        sl = procs.start(
            "superlink",
            [
                "flower-superlink", "--insecure", *superlink_flags, "--isolation", "subprocess",
                "--host", "127.0.0.1", "--port", str(port),
                "--disable-runtime-dependency-installation",
            ],
            logs["superlink"],
            env,
            cwd=out_dir,
        )
        wait_http(port, sl, log_path=logs["superlink"])
        ports: set[int] = {port}
        for i in range(nodes):
            name = f"supernode-{i}"
            node_port = free_port()
            while node_port in ports:
                node_port = free_port()
            ports.add(node_port)
            logs[name] = out_dir / "logs" / f"{name}.log"
            procs.start(
                name,
                [
                    "flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{port}",
                    "--host", "127.0.0.1", "--port", str(node_port),
                    "--node-config", f"partition-id={i} num-partitions={nodes}",
                ],
                logs[name],
                env,
                cwd=out_dir,
            )
        cfg_file = write_run_config(out_dir / "run-config.toml", complete_run_config(run_config, out_dir))
        rc = _flwr_run(
            procs, app_dir, cfg_file, env, logs["flwr-run"], out_dir,
            int(run_config.get("num-server-rounds", 0)), fed_cfg, timeout, on_round,
        )
    finally:
        notes = procs.stop_all()
        if main:
            signal.signal(signal.SIGTERM, previous)
    return LaunchResult(rc, time.time() - t0, out_dir, read_rounds(out_dir), logs, notes)


def simulate(
    run_config: Mapping[str, Any],
    out_dir: Path,
    *,
    num_clients: int,
    cpus_per_client: float = 1.0,
    app_dir: Path | None = None,
    timeout: float = 3600.0,
    on_round: Callable[[dict[str, Any], Processes], None] | None = None,
) -> LaunchResult:
    """Run the apps in Flower's simulation runtime: our own SuperLink (``--simulation``) + ``flwr run``.

    ``run_config`` must hold ``output-dir`` = ``out_dir`` (absolute) and ``num-server-rounds``.
    """
    cpus = int(cpus_per_client) if float(cpus_per_client).is_integer() else float(cpus_per_client)
    fed_cfg = f"num-supernodes={int(num_clients)} client-resources-num-cpus={cpus}"
    return _launch(run_config, out_dir, app_dir, ["--simulation"], timeout, on_round, fed_cfg=fed_cfg)


def deploy_local(
    run_config: Mapping[str, Any],
    out_dir: Path,
    *,
    nodes: int,
    app_dir: Path | None = None,
    timeout: float = 3600.0,
    on_round: Callable[[dict[str, Any], Processes], None] | None = None,
) -> LaunchResult:
    """Real deployment runtime on loopback: ``flower-superlink`` + ``nodes`` × ``flower-supernode`` + ``flwr run``.

    SuperNode ``i`` gets ``--node-config "partition-id=i num-partitions=N"`` and its own port.
    ``on_round(record, processes)`` is called for each finished round (e.g. to kill a node).
    """
    return _launch(run_config, out_dir, app_dir, [], timeout, on_round, nodes=nodes)
