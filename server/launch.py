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
for it and its process group) in :meth:`server.processes.Processes.stop_all`.
Bad arguments raise :class:`~lopa_fed.errors.ConfigError` before any process starts, and the
run directory is guarded by :mod:`server.guard` (an existing run needs ``resume`` or
``force``; ``OUT/.lock`` is held for the whole launch; ``run.json`` ends ``completed`` or
``failed``).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lopa_fed.errors import ConfigError
from lopa_fed.federation import NUM_PARTITIONS, PARTITION_ID
from lopa_fed.federation.paths import absolute, data_dir

from . import guard
from .metrics import read_rounds
from .processes import LaunchError, Processes, free_port, wait_http

CONNECTION = "lopa"


def project_dir() -> Path:
    """The Flower app directory (the checkout holding ``pyproject.toml`` with ``[tool.flwr.app]``).

    Raises
    ------
    ConfigError
        The package is not installed from a checkout (editable install).
    """
    here = Path(__file__).resolve().parent.parent
    py = here / "pyproject.toml"
    if py.is_file() and "[tool.flwr.app]" in py.read_text():
        return here
    raise ConfigError(
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
    lines = []
    for key, value in overrides.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, (int, float)):
            text = repr(value)
        elif isinstance(value, str):
            text = json.dumps(value)  # JSON string escapes are valid TOML basic-string escapes
        else:
            raise ConfigError(f"run-config value for {key!r} must be a bool, number or string, got {type(value).__name__}")
        lines.append(f"{json.dumps(str(key))} = {text}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class LaunchResult:
    """Outcome of a launch."""

    returncode: int
    seconds: float
    out_dir: Path
    rounds: list[dict[str, Any]]
    logs: dict[str, Path]
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    first_round: int = 1

    @property
    def completed(self) -> bool:
        """The run wrote ``status: completed`` in ``run.json`` (and ``flwr run`` succeeded)."""
        p = self.out_dir / "run.json"
        return self.error is None and p.is_file() and json.loads(p.read_text()).get("status") == "completed"

    @property
    def failures(self) -> list[str]:
        """:func:`server.guard.round_failures` of this launch's rounds (``!``: every client of the round failed).

        Rounds of an earlier launch (before ``first_round`` of a resumed run) are not counted again.
        """
        return guard.round_failures([r for r in self.rounds if int(r["round"]) >= self.first_round])


def complete_run_config(run_config: Mapping[str, Any], out_dir: Path) -> dict[str, Any]:
    """``run_config`` with absolute ``output-dir`` (= ``out_dir``), ``data-dir`` and ``private-dir``.

    The apps run inside ``$FLWR_HOME/apps/...`` with the SuperLink's or SuperNode's working
    directory, where the checkout-relative data lookup cannot work; so the data directory is
    resolved here, in the launching process (:mod:`lopa_fed.federation.paths`).
    """
    cfg = dict(run_config)
    cfg["output-dir"] = str(Path(out_dir).resolve())
    found = data_dir(str(cfg.get("data-dir", "") or ""))
    if found:
        cfg["data-dir"] = found
    if cfg.get("private-dir"):
        cfg["private-dir"] = absolute(str(cfg["private-dir"]))
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
            raise LaunchError(f"flwr run did not finish within {timeout:.0f}s (log: {log_path})")
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


def check_launch(clients: int, timeout: float, *, cpus_per_client: float = 1.0) -> None:
    """Refuse launch arguments Flower would fail on later (ConfigError, before any process starts)."""
    if int(clients) < 1:
        raise ConfigError(f"need at least one client, got {clients}")
    if not float(cpus_per_client) > 0:
        raise ConfigError(f"--cpus-per-client must be > 0, got {cpus_per_client:g}")
    if not float(timeout) > 0:
        raise ConfigError(f"--timeout must be > 0 seconds, got {timeout:g}")


class _Terminated(SystemExit):
    """Raised by the SIGTERM handler so that ``finally`` blocks stop every started process (exit code 143)."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise _Terminated(128 + signum)


def _start_superlink(
    procs: Processes, port: int, flags: list[str], logs: dict[str, Path], env: Mapping[str, str], out_dir: Path
) -> None:
    """Start ``flower-superlink`` on 127.0.0.1:``port`` and wait until it answers."""
    sl = procs.start(
        "superlink",
        [
            "flower-superlink", "--insecure", *flags, "--isolation", "subprocess",
            "--host", "127.0.0.1", "--port", str(port),
            "--disable-runtime-dependency-installation",
        ],
        logs["superlink"],
        env,
        cwd=out_dir,
    )
    wait_http(port, sl, log_path=logs["superlink"])


def _start_supernodes(
    procs: Processes, port: int, nodes: int, logs: dict[str, Path], env: Mapping[str, str], out_dir: Path
) -> None:
    """Start ``nodes`` SuperNodes on distinct free ports; node ``i`` holds partition ``i`` of ``nodes``."""
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
                "--node-config", f"{PARTITION_ID}={i} {NUM_PARTITIONS}={nodes}",
            ],
            logs[name],
            env,
            cwd=out_dir,
        )


def _launch(
    run_config: Mapping[str, Any],
    out_dir: Path,
    app_dir: Path | None,
    superlink_flags: list[str],
    timeout: float,
    on_round: Callable[[dict[str, Any], Processes], None] | None,
    fed_cfg: str | None = None,
    nodes: int = 0,
    force: bool = False,
    claimed: Callable[..., LaunchResult] | None = None,
) -> LaunchResult:
    """Claim ``out_dir`` (:func:`server.guard.claim`) and run the federation in it (``claimed``: the launch)."""
    out_dir = Path(out_dir).resolve()
    app_dir = app_dir or project_dir()
    with guard.claim(out_dir, run_config, force=force) as first_round:
        try:
            res = (claimed or _launch_claimed)(
                run_config, out_dir, app_dir, superlink_flags, timeout, on_round, fed_cfg, nodes
            )
        except BaseException as exc:  # timeout, a process that would not start, SIGTERM, Ctrl-C
            guard.mark_failed(out_dir, f"{type(exc).__name__}: {exc}")
            raise
        res.error = guard.finish(out_dir, res.returncode, res.logs["flwr-run"])
        res.first_round = first_round
    return res


def _launch_claimed(
    run_config: Mapping[str, Any],
    out_dir: Path,
    app_dir: Path,
    superlink_flags: list[str],
    timeout: float,
    on_round: Callable[[dict[str, Any], Processes], None] | None,
    fed_cfg: str | None,
    nodes: int,
) -> LaunchResult:
    """Start a private SuperLink (plus ``nodes`` SuperNodes), run ``flwr run``, and stop every process by PID.

    SIGTERM is turned into an exception while this runs (main thread only), so a terminated
    caller still stops the SuperLink, SuperNodes and Ray workers it started.
    """
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
        _start_superlink(procs, port, superlink_flags, logs, env, out_dir)
        _start_supernodes(procs, port, nodes, logs, env, out_dir)
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
    force: bool = False,
) -> LaunchResult:
    """Run the apps in Flower's simulation runtime: our own SuperLink (``--simulation``) + ``flwr run``.

    ``run_config`` must hold ``output-dir`` = ``out_dir`` (absolute) and ``num-server-rounds``.
    ``force`` replaces a run already in ``out_dir`` (``resume`` in the run config continues it).

    Raises
    ------
    ConfigError
        ``num_clients < 1`` or ``cpus_per_client <= 0`` (checked before anything starts).
    OutputExistsError, CheckpointError, DataError, RunBusyError
        From :func:`server.guard.claim`, before anything starts.
    """
    check_launch(num_clients, timeout, cpus_per_client=cpus_per_client)
    cpus = int(cpus_per_client) if float(cpus_per_client).is_integer() else float(cpus_per_client)
    fed_cfg = f"num-supernodes={int(num_clients)} client-resources-num-cpus={cpus}"
    return _launch(run_config, out_dir, app_dir, ["--simulation"], timeout, on_round, fed_cfg=fed_cfg, force=force)


def deploy_local(
    run_config: Mapping[str, Any],
    out_dir: Path,
    *,
    nodes: int,
    app_dir: Path | None = None,
    timeout: float = 3600.0,
    on_round: Callable[[dict[str, Any], Processes], None] | None = None,
    force: bool = False,
) -> LaunchResult:
    """Real deployment runtime on loopback: ``flower-superlink`` + ``nodes`` × ``flower-supernode`` + ``flwr run``.

    With TLS and SuperNode authentication: :func:`server.tls.deploy_local_tls`.

    SuperNode ``i`` gets ``--node-config "partition-id=i num-partitions=N"`` and its own port.
    ``on_round(record, processes)`` is called for each finished round (e.g. to kill a node).

    Raises
    ------
    ConfigError
        ``nodes < 1`` (checked before anything starts).
    OutputExistsError, CheckpointError, DataError, RunBusyError
        From :func:`server.guard.claim`, before anything starts (``force`` as in :func:`simulate`).
    """
    check_launch(nodes, timeout)
    return _launch(run_config, out_dir, app_dir, [], timeout, on_round, nodes=nodes, force=force)
