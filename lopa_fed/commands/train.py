"""``lopa-fed train``: train one method on one task, centralized, and report its metrics.

The same path serves every task: the task fills in unset options
(:func:`~lopa_fed.commands.options.resolve`), reads and encodes its splits
(:func:`~lopa_fed.data.load_splits`) and scores a model (:meth:`Task.evaluate`:
accuracy/F1/MCC on GLUE dev, pass@1 by execution on a code task's test half).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from ..config import PAPER_LR
from ..errors import OutputExistsError
from . import report
from .options import add_model_args, add_train_args, resolve


def register(subparsers: Any) -> None:
    """Add ``train``."""
    from ..cli import EPILOG

    lrs = ", ".join(f"{k} {v:g}" for k, v in PAPER_LR.items())
    t = subparsers.add_parser(
        "train",
        help="train and evaluate one method on one task (centralized)",
        description=(
            "Train a prompt method or baseline on a task with a frozen model and report the task metric on "
            "the held-out validation slice and on the dev split (GLUE dev; a code task's test half, by pass@1). "
            f"Writes OUT/metrics.json and OUT/checkpoint/. Paper learning rates on GLUE: {lrs}."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_args(t)
    add_train_args(t)
    t.add_argument("--out", required=True, help="output directory")
    t.add_argument("--force", action="store_true", help="overwrite an existing run in --out")
    t.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    t.set_defaults(func=cmd_train)


def _refuse_overwrite(out: Path, force: bool) -> None:
    held = [n for n in ("metrics.json", "checkpoint") if (out / n).exists()]
    if held and not force:
        raise OutputExistsError(f"{out} already holds a run ({', '.join(held)}); pass --force to overwrite it")


def cmd_train(args: argparse.Namespace) -> int:
    """``lopa-fed train``."""
    from rich.console import Console

    from ..checkpoint import save_checkpoint
    from ..data import load_splits
    from ..model import build_model
    from ..train import evaluate, fit

    out = Path(args.out)
    _refuse_overwrite(out, args.force)
    rs = resolve(args)  # every value checked before anything loads
    task, cfg, tcfg = rs.task, rs.lopa, rs.train
    console = Console(stderr=True)
    t0 = time.perf_counter()
    with console.status(f"loading {rs.model} and {task.name} data"):
        model = build_model(task, cfg, model=rs.model, encoder=args.encoder, kind=rs.kind, seed=args.seed)
        splits = load_splits(task, model.frozen, data_dir=args.data_dir, max_length=tcfg.max_length,
                             val_fraction=rs.val_fraction, seed=args.seed, train_limit=args.train_limit,
                             test_limit=args.test_limit)
    console.print(
        f"[bold]{task.name}[/] {cfg.method}: {len(splits.train)} train / {len(splits.val)} val / "
        f"{len(splits.test)} dev examples, {model.num_trainable():,} trainable parameters, frozen "
        f"{model.frozen.kind} {model.frozen.identity} (loaded in {time.perf_counter() - t0:.1f}s); "
        f"lr {tcfg.lr:g}, r {cfg.r}, h' {cfg.hidden}, {tcfg.epochs} epochs"
    )
    result = fit(model, splits.train, tcfg, progress=not args.no_progress, description=f"{task.name}/{cfg.method}")
    opts = {"batch_size": tcfg.eval_batch_size, "progress": not args.no_progress}
    val = evaluate(model, splits.val, **opts) if len(splits.val) else {}
    t1 = time.perf_counter()
    dev = evaluate(model, splits.test, **opts)
    metrics = report.run_metrics(
        task.name, model, result, eval_seconds=time.perf_counter() - t1,
        val=report.summary(val), dev=report.summary(dev),
        config={"lopa": cfg.to_dict(), "train": tcfg.to_dict()},
        data={"train": len(splits.train), "val": len(splits.val), "dev": len(splits.test)},
    )
    extra = {"generation": dev["generation"]} if "generation" in dev else {}
    save_checkpoint(out / "checkpoint", model, task=task.name, train=tcfg.to_dict(), **extra)
    if "records" in dev:
        report.write_records(out / "test_results.jsonl", dev["records"])
    report.write_metrics(out / "metrics.json", metrics)
    Console().print(report.train_table(task.name, model, result, {"val": val, "dev": dev}))
    console.print(f"wrote {out / 'metrics.json'} and {out / 'checkpoint'}/")
    return 0
