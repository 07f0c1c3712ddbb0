"""``lopa-fed simulate`` and ``lopa-fed deploy-local`` (registered by ``lopa_fed.cli``).

Both run the same Flower apps (``clients.app:app``, ``server.app:app``) with ``flwr run``:
``simulate`` against a SuperLink in simulation mode, ``deploy-local`` against a real
SuperLink and N SuperNodes on 127.0.0.1. They show round progress and end with a
summary table built from ``<out>/rounds.json``.

Every option and ``--set KEY=VALUE`` is parsed into :class:`lopa_fed.federation.FedSettings`
before Flower starts (:func:`launch_plan`), so an unknown key or a bad value is a one-line
:class:`~lopa_fed.errors.ConfigError` (the ``lopa-fed`` command prints it and exits 2). The run
directory is checked then too (:func:`server.guard.check_run_dir`: an existing run needs
``--resume`` or ``--force``, a resume needs readable files, the data must be there). A run
that did not complete, or in which every client of some round failed, ends with the summary
and a one-line :class:`~server.guard.RunFailedError` (exit 2).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lopa_fed.errors import ConfigError, LoPAError

#: CLI option → run-config key (only options the user gave are passed on).
_OPTIONS: dict[str, str] = {
    "task": "task",
    "method": "method",
    "model": "model",
    "encoder": "encoder",
    "rounds": "num-server-rounds",
    "federate": "federate",
    "partition": "partitioner",
    "alpha": "alpha",
    "strategy": "strategy",
    "local_epochs": "local-epochs",
    "local_steps": "local-steps",
    "batch_size": "batch-size",
    "lr": "lr",
    "max_length": "max-length",
    "max_new_tokens": "max-new-tokens",
    "pool_size": "pool-size",
    "max_test_examples": "max-test-examples",
    "seed": "seed",
    "min_nodes": "min-nodes",
    "round_timeout": "round-timeout",
    "private_dir": "private-dir",
    "data_dir": "data-dir",
    "max_update_norm": "max-update-norm",
    "dp_noise": "dp-noise",
    "dp_clip": "dp-clip",
    "audit_log": "audit-log",
    "tiers": "tiers",
    "secagg": "secagg",
}


def _add_common(p: argparse.ArgumentParser) -> None:
    from lopa_fed.federation import FEDERATE_MODES, PARTITIONERS, STRATEGIES

    p.add_argument(
        "--task",
        help="GLUE task: sst2, sst2-sentences, rte, mrpc, cola; or code task: cruxeval-o, cruxeval-i, mbpp (default: sst2)",
    )
    p.add_argument("--method", help="prompt method (default: lopa)")
    p.add_argument(
        "--model", help="frozen model name (default: the task's: the packaged MiniLM; SmolLM2-135M for code tasks)"
    )
    p.add_argument(
        "--encoder", help="instance encoder name or tier: minilm, minilm-l<k>, static (default: the packaged MiniLM)"
    )
    p.add_argument("--rounds", type=int, help="number of server rounds (default: 3)")
    p.add_argument("--federate", choices=FEDERATE_MODES, help="what is sent (default: zs)")
    p.add_argument("--partition", choices=PARTITIONERS, help="flwr-datasets partitioner (default: iid)")
    p.add_argument("--alpha", type=float, help="Dirichlet alpha over labels (default: 0.5)")
    p.add_argument("--strategy", choices=STRATEGIES, help="server strategy (default: fedavg)")
    p.add_argument("--local-epochs", type=int, help="local epochs per round (default: 1)")
    p.add_argument("--local-steps", type=int, help="cap on local optimiser steps per round, 0 = none (default: 10)")
    p.add_argument("--batch-size", type=int, help="local batch size (default: 16)")
    p.add_argument("--lr", type=float, help="local learning rate, 0 = the task's default (default: 1e-3)")
    p.add_argument(
        "--max-length", type=int, help="token limit per example, 0 = the task's default (256 GLUE, 512 code)"
    )
    p.add_argument(
        "--max-new-tokens", type=int, help="code tasks: generation budget for pass@1, 0 = task default (64/256)"
    )
    p.add_argument("--pool-size", type=int, help="train examples that are partitioned, 0 = all (default: 2000)")
    p.add_argument("--max-test-examples", type=int, help="cap on each client's local test split (default: 200)")
    p.add_argument("--seed", type=int, help="seed of partitioning, splits, init and training (default: 9876)")
    p.add_argument("--min-nodes", type=int, help="minimum train/evaluate/available nodes (default: all clients)")
    p.add_argument("--round-timeout", type=float, help="seconds to wait for replies per round (default: 600)")
    p.add_argument("--private-dir", help="client private-state directory (default: OUT/private)")
    p.add_argument("--data-dir", help="directory holding SST-2/, RTE/, ... (default: auto)")
    p.add_argument("--max-update-norm", type=float, help="reject updates with a larger L2 norm, 0 = off (default: 100)")
    p.add_argument("--dp-noise", type=float, help="server-side DP noise multiplier (needs --dp-clip)")
    p.add_argument("--dp-clip", type=float, help="server-side DP clipping norm; > 0 enables DP")
    p.add_argument("--audit-log", help="clients append SHA-256 digests of every outgoing array here (JSONL)")
    p.add_argument(
        "--tiers", metavar="TIER[:r=R][:hidden=H][:n=COUNT],...",
        help="encoder tiers per client, in partition order, e.g. 'minilm:r=4:n=4,minilm-l3:r=1:n=3,static:r=1:n=3' "
        "(tiers: minilm = MiniLM-L6, minilm-l<k> = its first k layers, static = the frozen model's token embeddings "
        "mean-pooled; r/hidden default to the run's; n default 1; the counts give the number of clients). Only Zs "
        "(and the classifier head) is federated, so clients of every tier share it (run-config key tiers)",
    )
    p.add_argument(
        "--secagg", action="store_const", const=True, default=None,
        help="secure aggregation with Flower's SecAgg+ (federate zs, strategy fedavg): the server sees only the "
        "sum of masked client Zs (run-config secagg = true; see secagg-clip, secagg-shares, secagg-threshold)",
    )
    p.add_argument(
        "--resume", action="store_true",
        help="continue the run in OUT from its last completed round and each client's private state "
        "(state.json, global/latest.safetensors and the private-state files must be readable)",
    )
    p.add_argument(
        "--force", action="store_true",
        help="OUT already holds a run: delete it (global tensors, rounds, logs and every client's private state) "
        "and start a new one. Without --resume or --force an existing run is refused",
    )
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help=(
            "any run-config key of [tool.flwr.app.config], e.g. r=2, lora-r=8, dropout=0.2, on-bad-private-state=fresh "
            "(repeatable; VALUE is TOML; unknown keys are refused)"
        ),
    )
    p.add_argument(
        "--out", required=True,
        help="run directory (run.json, rounds.json, rounds.png, global/, private/, logs/); locked while a launcher uses it",
    )
    p.add_argument("--app-dir", help="Flower app directory (default: this checkout)")
    p.add_argument("--timeout", type=float, default=3600.0, help="give up after this many seconds (default: 3600)")


EXIT_CODES = """\
exit codes: 0 = every round completed and had a usable client reply; 2 = refused before Flower
started (bad option, OUT holds a run and neither --resume nor --force was given, OUT is locked by
another launcher, unreadable resume files, data not found), or the run did not complete, or every
client of some round failed (the summary names the round and the cause; run.json says
status "failed" with the error when the run stopped early).
"""


def register(subparsers: Any) -> None:
    """Add ``simulate`` and ``deploy-local`` to the ``lopa-fed`` sub-command parsers."""
    s = subparsers.add_parser(
        "simulate", epilog=EXIT_CODES,
        help="federated LoPA in Flower's simulation runtime (flwr run)",
        description=(
            "Run the Flower apps in Flower's simulation runtime: start a private SuperLink "
            "(simulation mode, free port on 127.0.0.1, FLWR_HOME=OUT/flwr-home), run `flwr run` "
            "against it, stream progress, print a summary and stop every process by PID."
        ),
    )
    s.add_argument(
        "--num-clients", type=int, default=None,
        help="number of simulated SuperNodes (default: the --tiers counts, else 2)",
    )
    s.add_argument("--cpus-per-client", type=float, default=1.0, help="Ray CPUs per client (default: 1 → 2 workers on 2 cores)")
    _add_common(s)
    s.set_defaults(func=cmd_simulate)

    d = subparsers.add_parser(
        "deploy-local", epilog=EXIT_CODES,
        help="federated LoPA on Flower's deployment runtime: SuperLink + N SuperNodes on 127.0.0.1",
        description=(
            "Start flower-superlink and N flower-supernode processes on 127.0.0.1 (distinct ports, "
            '--node-config "partition-id=i num-partitions=N"), run `flwr run . <connection> --stream`, '
            "wait for completion, print the result and stop every process by PID."
        ),
    )
    d.add_argument("--nodes", type=int, default=None, help="number of SuperNodes (default: the --tiers counts, else 2)")
    d.add_argument(
        "--tls", action="store_true",
        help="TLS and SuperNode authentication: make a CA, a server certificate (127.0.0.1, localhost, ::1) and an "
        "ECDSA key per node in OUT/tls and OUT/keys, start the SuperLink with --ssl-* and --enable-supernode-auth, "
        "register every node key (flwr supernode register) and connect the SuperNodes with their keys",
    )
    _add_common(d)
    d.set_defaults(func=cmd_deploy_local)


def _set_values(items: list[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` items as ``{key: value}`` (VALUE read as TOML, else kept as a string)."""
    import tomllib

    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        if not k.strip():
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r} (no key)")
        try:
            out[k.strip()] = tomllib.loads(f"x = {v}")["x"]
        except tomllib.TOMLDecodeError:
            out[k.strip()] = v
    return out


def run_config_from_args(args: argparse.Namespace, num_clients: int) -> dict[str, Any]:
    """Run-config overrides from the parsed options, checked against the schema.

    Only options the user gave are passed on (``min-nodes`` defaults to the number of
    clients). Values are converted to their keys' TOML types.

    Raises
    ------
    ConfigError
        ``--set`` without ``=``, an unknown key (naming the closest known one), a bad value,
        or ``--min-nodes`` above the number of clients.
    """
    from lopa_fed.federation import SCHEMA, FedSettings

    cfg: dict[str, Any] = {}
    for opt, key in _OPTIONS.items():
        val = getattr(args, opt, None)
        if val is not None:
            cfg[key] = val
    cfg.update(_set_values(args.set))
    cfg.setdefault("min-nodes", num_clients)
    if args.resume:
        cfg["resume"] = True
    cfg = SCHEMA.parse(cfg)
    if cfg["min-nodes"] > num_clients:
        raise ConfigError(f"--min-nodes {cfg['min-nodes']} is larger than the number of clients {num_clients}")
    FedSettings.from_run_config(cfg)  # fail fast, with the key in the message
    return cfg


@dataclass(frozen=True)
class LaunchPlan:
    """Everything a launch needs, validated before Flower starts."""

    mode: str
    clients: int
    run_config: dict[str, Any]
    settings: Any  # FedSettings
    out: Path
    app_dir: Path | None


def launch_plan(args: argparse.Namespace, mode: str) -> LaunchPlan:
    """Parse and check the options of ``simulate`` / ``deploy-local`` (no process is started).

    Raises
    ------
    ConfigError
        Any bad option or run-config key (see :func:`run_config_from_args` and
        :func:`server.launch.check_launch`).
    OutputExistsError, CheckpointError, DataError
        The run directory cannot be used as asked (:func:`server.guard.check_run_dir`).
    """
    from lopa_fed.federation import FedSettings
    from lopa_fed.federation.hetero import fleet_size

    from . import guard
    from .launch import check_launch

    n = fleet_size(getattr(args, "tiers", None), args.num_clients if mode == "simulate" else args.nodes)
    check_launch(n, args.timeout, cpus_per_client=getattr(args, "cpus_per_client", 1.0))
    cfg = run_config_from_args(args, n)
    out = Path(args.out).expanduser().resolve()
    app_dir = Path(args.app_dir).resolve() if args.app_dir else None
    guard.check_run_dir(out, cfg, force=bool(getattr(args, "force", False)))
    return LaunchPlan(mode, n, cfg, FedSettings.from_run_config(cfg), out, app_dir)


def _run(args: argparse.Namespace, mode: str) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from . import launch

    plan = launch_plan(args, mode)
    console = Console()
    settings, n, out, cfg = plan.settings, plan.clients, plan.out, plan.run_config
    console.print(
        f"[bold]{mode}[/]: {n} clients, {settings.server.num_server_rounds} rounds, task {settings.task}, "
        f"model {settings.model_name}, method {settings.lopa.method} (r={settings.lopa.r}), "
        f"federate={settings.federate}, {settings.data.partitioner} partitions, "
        f"strategy {settings.server.strategy}" + (f", tiers {settings.tiers}" if settings.tiers else "") + f" → {out}"
    )
    progress = Progress(
        TextColumn("[bold]rounds"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(), console=console,
    )
    metric = "acc" if settings.metric == "accuracy" else settings.metric

    with progress:
        bar = progress.add_task("rounds", total=settings.server.num_server_rounds, info="starting Flower…")

        def on_round(rec: dict[str, Any], _procs: Any) -> None:
            acc = rec.get("acc_mean")
            info = f"{metric} {acc:.3f}" if acc is not None else f"{metric} n/a"
            progress.update(
                bar, completed=int(rec["round"]),
                info=f"{info}  up {rec['bytes_up']:,} B  down {rec['bytes_down']:,} B  {rec['seconds']:.0f}s/round",
            )

        if mode == "simulate":
            res = launch.simulate(
                cfg, out, num_clients=n, cpus_per_client=args.cpus_per_client, app_dir=plan.app_dir,
                timeout=args.timeout, on_round=on_round, force=args.force,
            )
        else:
            deploy = launch.deploy_local
            if getattr(args, "tls", False):
                from .tls import deploy_local_tls as deploy
            res = deploy(
                cfg, out, nodes=n, app_dir=plan.app_dir, timeout=args.timeout, on_round=on_round, force=args.force,
            )
    return _report(console, res, mode, out)


def _report(console: Any, res: Any, mode: str, out: Path) -> int:
    """Print the summary of a launch and which rounds had failed clients; 0 if it completed cleanly.

    Raises
    ------
    RunFailedError
        The run did not complete (``run.json`` is then ``failed``, with the cause), or every
        client of some round failed; the message names the round and the cause.
    """
    from .guard import RunFailedError
    from .tiers import print_tier_summary

    print_summary(console, res.rounds, title=f"{mode} — {out}")
    print_tier_summary(console, res.rounds)  # only when clients ran several encoder tiers
    for note in res.notes:
        console.print(f"[dim]{note}[/]")
    failures = res.failures
    for line in failures:
        console.print(f"[{'bold red' if line.startswith('!') else 'yellow'}]{line.lstrip('!')}[/]")
    if res.error is not None or not res.completed:
        raise RunFailedError(f"{mode} did not complete: {res.error or 'no completed status'}; logs: {out / 'logs'}")
    fatal = [line.lstrip("!") for line in failures if line.startswith("!")]
    if fatal:
        more = f" (and {len(fatal) - 1} more such failure(s))" if len(fatal) > 1 else ""
        raise RunFailedError(f"{mode} ran every round, but {fatal[0]}{more}; logs: {out / 'logs'}")
    console.print(
        f"[green]done[/] in {res.seconds:.0f}s: {out / 'rounds.json'}, {out / 'rounds.png'}, {out / 'global'}"
    )
    return 0


def print_summary(console: Any, rounds: list[dict[str, Any]], title: str = "rounds") -> None:
    """A rich table of the per-round records."""
    from rich.table import Table

    def f(x: Any, fmt: str = "{:.3f}") -> str:
        return "–" if x is None else fmt.format(x)

    t = Table(title=title)
    metric = "pass@1" if rounds and rounds[0].get("metric") == "pass@1" else "acc"
    for col in ("rnd", "loss", metric, "min", "max", "up B", "down B", "ok", "fail", "rej", "s"):
        t.add_column(col, justify="right")
    for r in rounds:
        t.add_row(
            str(r["round"]), f(r.get("train_loss")), f(r.get("acc_mean")), f(r.get("acc_min")), f(r.get("acc_max")),
            f"{r['bytes_up']:,}", f"{r['bytes_down']:,}", str(r["replied"]), str(r["failed"]), str(r["rejected"]),
            f(r.get("seconds"), "{:.0f}"),
        )
    console.print(t)
    from .privacy import summary_line

    dp_line = summary_line(rounds[-1].get("dp") if rounds else None)  # server-side DP runs: epsilon so far
    if dp_line:
        console.print(dp_line)


def cmd_simulate(args: argparse.Namespace) -> int:
    """Handler of ``lopa-fed simulate``."""
    return _run(args, "simulate")


def cmd_deploy_local(args: argparse.Namespace) -> int:
    """Handler of ``lopa-fed deploy-local``."""
    return _run(args, "deploy-local")


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (``python -m server.cli simulate ...``); a LoPAError is one line on stderr, exit 2."""
    parser = argparse.ArgumentParser(prog="python -m server.cli")
    register(parser.add_subparsers())
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    except LoPAError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())


__all__ = ["LaunchPlan", "launch_plan", "print_summary", "register", "run_config_from_args"]
