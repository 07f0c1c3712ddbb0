"""``lopa-fed simulate`` and ``lopa-fed deploy-local`` (registered by ``lopa_fed.cli``).

Both run the same Flower apps (``clients.app:app``, ``server.app:app``) with ``flwr run``:
``simulate`` against a SuperLink in simulation mode, ``deploy-local`` against a real
SuperLink and N SuperNodes on 127.0.0.1. They show round progress and end with a
summary table built from ``<out>/rounds.json``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

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
}


def _add_common(p: argparse.ArgumentParser) -> None:
    from clients.settings import FEDERATE_MODES, PARTITIONERS, STRATEGIES

    p.add_argument(
        "--task",
        help="GLUE task: sst2, rte, mrpc, cola; or code task: cruxeval-o, cruxeval-i, mbpp (default: sst2)",
    )
    p.add_argument("--method", help="prompt method (default: lopa)")
    p.add_argument(
        "--model", help="frozen model name (default: the packaged MiniLM; SmolLM2-135M for code tasks)"
    )
    p.add_argument("--encoder", help="instance encoder name (default: the packaged MiniLM)")
    p.add_argument("--rounds", type=int, help="number of server rounds (default: 3)")
    p.add_argument("--federate", choices=FEDERATE_MODES, help="what is sent (default: zs)")
    p.add_argument("--partition", choices=PARTITIONERS, help="flwr-datasets partitioner (default: iid)")
    p.add_argument("--alpha", type=float, help="Dirichlet alpha over labels (default: 0.5)")
    p.add_argument("--strategy", choices=STRATEGIES, help="server strategy (default: fedavg)")
    p.add_argument("--local-epochs", type=int, help="local epochs per round (default: 1)")
    p.add_argument("--local-steps", type=int, help="cap on local optimiser steps per round, 0 = none (default: 10)")
    p.add_argument("--batch-size", type=int, help="local batch size (default: 16)")
    p.add_argument("--lr", type=float, help="local learning rate, 0 = paper default (default: 1e-3)")
    p.add_argument(
        "--max-length", type=int, help="token limit per example, 0 = task default (128 GLUE, 512 code)"
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
    p.add_argument("--resume", action="store_true", help="continue OUT from its last round and each client's private state")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="any other run-config key of [tool.flwr.app.config] (repeatable; VALUE is TOML)",
    )
    p.add_argument("--out", required=True, help="output directory (rounds.json, rounds.png, global/, logs/)")
    p.add_argument("--app-dir", help="Flower app directory (default: this checkout)")
    p.add_argument("--timeout", type=float, default=3600.0, help="give up after this many seconds (default: 3600)")


def register(subparsers: Any) -> None:
    """Add ``simulate`` and ``deploy-local`` to the ``lopa-fed`` sub-command parsers."""
    s = subparsers.add_parser(
        "simulate",
        help="federated LoPA in Flower's simulation runtime (flwr run)",
        description=(
            "Run the Flower apps in Flower's simulation runtime: start a private SuperLink "
            "(simulation mode, free port on 127.0.0.1, FLWR_HOME=OUT/flwr-home), run `flwr run` "
            "against it, stream progress, print a summary and stop every process by PID."
        ),
    )
    s.add_argument("--num-clients", type=int, default=2, help="number of simulated SuperNodes (default: 2)")
    s.add_argument("--cpus-per-client", type=float, default=1.0, help="Ray CPUs per client (default: 1 → 2 workers on 2 cores)")
    _add_common(s)
    s.set_defaults(func=cmd_simulate)

    d = subparsers.add_parser(
        "deploy-local",
        help="federated LoPA on Flower's deployment runtime: SuperLink + N SuperNodes on 127.0.0.1",
        description=(
            "Start flower-superlink and N flower-supernode processes on 127.0.0.1 (distinct ports, "
            '--node-config "partition-id=i num-partitions=N"), run `flwr run . <connection> --stream`, '
            "wait for completion, print the result and stop every process by PID."
        ),
    )
    d.add_argument("--nodes", type=int, default=2, help="number of SuperNodes (default: 2)")
    _add_common(d)
    d.set_defaults(func=cmd_deploy_local)


def run_config_from_args(args: argparse.Namespace, num_clients: int) -> dict[str, Any]:
    """Run-config overrides from the parsed options (validated through ``FedSettings``)."""
    import tomllib

    from clients.settings import FedSettings

    cfg: dict[str, Any] = {}
    for opt, key in _OPTIONS.items():
        val = getattr(args, opt, None)
        if val is not None:
            cfg[key] = val
    for item in args.set:
        if "=" not in item:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        try:
            cfg[k.strip()] = tomllib.loads(f"x = {v}")["x"]
        except tomllib.TOMLDecodeError:
            cfg[k.strip()] = v
    cfg.setdefault("min-nodes", num_clients)
    if FedSettings(task=str(cfg.get("task", "sst2"))).is_code_task:
        cfg.setdefault("r", 1)  # the paper's code-task rank (LOPA.md); GLUE keeps r = 4
    if args.resume:
        cfg["resume"] = True
    if int(cfg["min-nodes"]) > num_clients:
        raise ValueError(f"--min-nodes {cfg['min-nodes']} is larger than the number of clients {num_clients}")
    FedSettings.from_run_config(cfg)  # fail fast, with the key in the message
    return cfg


def _run(args: argparse.Namespace, mode: str) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from clients.settings import FedSettings

    from . import launch

    console = Console()
    n = int(args.num_clients if mode == "simulate" else args.nodes)
    if n < 1:
        raise ValueError("need at least one client")
    cfg = run_config_from_args(args, n)
    settings = FedSettings.from_run_config(cfg)
    out = Path(args.out).expanduser().resolve()
    app_dir = Path(args.app_dir).resolve() if args.app_dir else None
    console.print(
        f"[bold]{mode}[/]: {n} clients, {settings.num_server_rounds} rounds, task {settings.task}, "
        f"model {settings.model_name}, method {settings.method} (r={settings.r}), federate={settings.federate}, {settings.partitioner} partitions, "
        f"strategy {settings.strategy} → {out}"
    )
    progress = Progress(
        TextColumn("[bold]rounds"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(), console=console,
    )

    with progress:
        bar = progress.add_task("rounds", total=settings.num_server_rounds, info="starting Flower…")

        def on_round(rec: dict[str, Any], _procs: Any) -> None:
            acc = rec.get("acc_mean")
            metric = "pass@1" if settings.is_code_task else "acc"
            info = f"{metric} {acc:.3f}" if acc is not None else f"{metric} n/a"
            progress.update(
                bar, completed=int(rec["round"]),
                info=f"{info}  up {rec['bytes_up']:,} B  down {rec['bytes_down']:,} B  {rec['seconds']:.0f}s/round",
            )

        if mode == "simulate":
            res = launch.simulate(
                cfg, out, num_clients=n, cpus_per_client=args.cpus_per_client, app_dir=app_dir,
                timeout=args.timeout, on_round=on_round,
            )
        else:
            res = launch.deploy_local(cfg, out, nodes=n, app_dir=app_dir, timeout=args.timeout, on_round=on_round)
    print_summary(console, res.rounds, title=f"{mode} — {out}")
    for note in res.notes:
        console.print(f"[dim]{note}[/]")
    if res.completed and res.returncode == 0:
        console.print(
            f"[green]done[/] in {res.seconds:.0f}s: {out / 'rounds.json'}, {out / 'rounds.png'}, {out / 'global'}"
        )
        return 0
    console.print(f"[bold red]run did not complete[/] (flwr run exit code {res.returncode}); logs: {out / 'logs'}")
    return 1


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


def cmd_simulate(args: argparse.Namespace) -> int:
    """Handler of ``lopa-fed simulate``."""
    return _run(args, "simulate")


def cmd_deploy_local(args: argparse.Namespace) -> int:
    """Handler of ``lopa-fed deploy-local``."""
    return _run(args, "deploy-local")


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (``python -m server.cli simulate ...``) when ``lopa-fed`` is not available."""
    parser = argparse.ArgumentParser(prog="python -m server.cli")
    register(parser.add_subparsers())
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())


__all__ = ["register", "run_config_from_args", "print_summary"]
