"""``lopa-fed evaluate``: score a saved checkpoint on its task's dev (or train) split."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from . import report


def register(subparsers: Any) -> None:
    """Add ``evaluate``."""
    e = subparsers.add_parser(
        "evaluate",
        help="evaluate a saved checkpoint on its task's dev split",
        description=(
            "Load a checkpoint (a run directory holding checkpoint/, or the checkpoint directory) and report its "
            "task's metric: accuracy/F1/MCC on GLUE dev, pass@1 on a code task's test half (per-problem records "
            "go to eval_<split>.jsonl beside the checkpoint)."
        ),
    )
    e.add_argument("--checkpoint", required=True, help="checkpoint directory, or a train run directory")
    e.add_argument("--data-dir", default=None, help="directory holding SST-2/, RTE/, CruxEval/, ...")
    e.add_argument("--limit", type=int, default=None, help="evaluate on the first N examples")
    e.add_argument("--split", default="dev", choices=("dev", "train"),
                   help="which split (default: dev; for code tasks dev = the test half)")
    e.add_argument("--json", action="store_true", help="print metrics as JSON")
    e.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``lopa-fed evaluate``."""
    from rich.console import Console

    from ..checkpoint import load_model
    from ..errors import ConfigError
    from ..train import evaluate

    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit must be >= 1, got {args.limit}")
    model, task, cfg = load_model(args.checkpoint)
    train_cfg = cfg.get("train") or {}
    seed = int(train_cfg.get("seed", 9876))
    max_length = int(train_cfg.get("max_length", task.defaults.max_length))
    examples = task.read(args.split, args.data_dir, limit=args.limit, seed=seed)
    res = evaluate(model, task.encode(examples, model.frozen, max_length), **_generation(cfg))
    out = report.summary(res) | {"task": task.name, "method": cfg["lopa"]["method"],
                                 "split": "test" if args.split == "dev" and "records" in res else args.split}
    if "records" in res:
        path = _checkpoint_dir(Path(args.checkpoint)).resolve().parent / f"eval_{out['split']}.jsonl"
        report.write_records(path, res["records"])
        out["results"] = str(path)
    if args.json:
        print(json.dumps(out))
    else:
        Console().print({k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()})
    return 0


def _checkpoint_dir(path: Path) -> Path:
    return path / "checkpoint" if (path / "checkpoint" / "config.json").is_file() else path


def _generation(cfg: dict[str, Any]) -> dict[str, Any]:
    """The decoding settings a code checkpoint was scored with (none for GLUE)."""
    saved = cfg.get("generation")
    if not isinstance(saved, dict):
        return {}
    from ..codegen.generate import GenerationConfig

    return {"generation": GenerationConfig(**{**saved, "stop": tuple(saved.get("stop", ()))})}
