"""Model and optimisation options shared by the commands, and how unset ones are filled in.

Options the user leaves unset stay ``None`` in the parsed arguments, and
:func:`resolve` takes their values from the task (:class:`~lopa_fed.tasks.TaskDefaults`),
so an explicit value (even one equal to another task's default) is always kept.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

from ..config import METHODS, ZS_INITS, LoPAConfig, TrainConfig
from ..errors import ConfigError
from ..tasks import TASKS, Task, get_task

KINDS = ("auto", "classifier", "mlm", "causal")


def add_model_args(p: argparse.ArgumentParser) -> None:
    """Options shared by commands that build a model (unset means: the task's default)."""
    p.add_argument("--task", required=True, help=f"task: {', '.join(TASKS)}")
    p.add_argument("--method", default="lopa", choices=METHODS, help="prompt method or baseline (default: lopa)")
    p.add_argument("--model", default=None, help="frozen model (default: MiniLM for GLUE, smollm2 for code tasks)")
    p.add_argument("--encoder", default="default", help="frozen instance encoder (default: MiniLM)")
    p.add_argument("--kind", default=None, choices=KINDS,
                   help="how the frozen model is read: classification head, MLM verbalizer, causal-LM verbalizer "
                   "(default: from its config; causal for code tasks)")
    p.add_argument("--m", type=int, default=10, help="soft prompt tokens (default: 10)")
    p.add_argument("--r", type=int, default=None, help="LoPA rank (default: 4 on GLUE, 1 on code tasks)")
    p.add_argument("--hidden", type=int, default=None,
                   help="instance-head width h' (default: 256 on GLUE; the encoder width on code tasks)")
    p.add_argument("--lora-r", type=int, default=16, help="LoRA rank for --method lora (default: 16)")
    p.add_argument("--zs-init", default=None, choices=ZS_INITS,
                   help="Zs init: normal = N(0, 1) as in the paper; vocab = random rows of the frozen model's "
                   "token embeddings, at their scale; auto = the task's choice for the frozen model: vocab on a "
                   "causal LM (no embedding LayerNorm) for GLUE, normal otherwise (default: auto)")
    p.add_argument("--paper-defaults", action="store_true",
                   help="use the paper's learning rates (GLUE: 1e-5 LoPA, 1e-4 PT/IDPG/LoRA) and N(0, 1) Zs for "
                   "every option left unset, instead of the measured defaults")
    p.add_argument("--data-dir", default=None, help="directory holding SST-2/, RTE/, CruxEval/, ...")
    p.add_argument("--max-length", type=int, default=None, help="token limit (default: 256 on GLUE, 512 on code tasks)")
    p.add_argument("--seed", type=int, default=9876, help="random seed (default: 9876, the paper's)")


def add_train_args(p: argparse.ArgumentParser) -> None:
    """Optimisation and data-budget options of ``train``."""
    p.add_argument("--epochs", type=int, default=None, help="epochs (default: 20 on GLUE, 5 on code tasks: the paper's)")
    p.add_argument("--max-steps", type=int, default=None, help="stop after N optimiser steps")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: the task's for the method)")
    p.add_argument("--batch-size", type=int, default=16, help="batch size (default: 16)")
    p.add_argument("--warmup", type=float, default=0.06, help="warmup fraction (default: 0.06)")
    p.add_argument("--train-limit", type=int, default=None, help="use a seeded subset of N training examples")
    p.add_argument("--test-limit", type=int, default=None,
                   help="evaluate on the first N dev examples (code tasks: N test problems scored by pass@1)")
    p.add_argument("--val-fraction", type=float, default=None,
                   help="share of train held out for validation (default: 0.1 on GLUE, 0 on code tasks)")


@dataclass(frozen=True)
class Resolved:
    """Everything ``train`` needs, with the task's defaults filled in and every value checked."""

    task: Task
    lopa: LoPAConfig
    train: TrainConfig
    model: str
    kind: str
    val_fraction: float


def _check_limits(args: argparse.Namespace) -> None:
    for name in ("train_limit", "test_limit", "max_steps", "epochs", "max_length", "batch_size"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    lr = getattr(args, "lr", None)
    if lr is not None and not (math.isfinite(lr) and lr > 0):
        raise ConfigError(f"--lr must be a finite number > 0, got {lr}")
    vf = getattr(args, "val_fraction", None)
    if vf is not None and not 0.0 <= vf < 1.0:
        raise ConfigError(f"--val-fraction must be in [0, 1), got {vf}")


def _hidden(args: argparse.Namespace, task: Task, kind: str) -> int:
    """``--hidden``, else the task's h′ (``None`` there means the instance encoder's width).

    The encoder may be a tier (:mod:`lopa_fed.tiers`); the ``static`` tier is as wide as
    the frozen model, which is then loaded here (once per process, as training would).
    """
    if args.hidden is not None:
        return args.hidden
    if task.defaults.hidden is not None or args.method in ("pt", "lora", "head"):
        return task.defaults.hidden or 256  # unused by methods without instance heads
    from ..backbone import FrozenModel
    from ..tiers import load_encoder, tier_info

    info = tier_info(args.encoder)
    frozen = FrozenModel.load(task.defaults.model_name(args.model), kind) if info and info.name == "static" else None
    return load_encoder(args.encoder, frozen).hidden_size


def resolve(args: argparse.Namespace) -> Resolved:
    """Fill unset options from the task's defaults and validate them all before anything loads.

    Raises
    ------
    ConfigError
        A value is out of range, or the method or kind cannot run on the task.
    """
    _check_limits(args)
    task = get_task(args.task)
    d = task.defaults
    kind = args.kind or d.kind
    task.check(args.method, kind)
    paper = bool(getattr(args, "paper_defaults", False))
    zs_init = args.zs_init or ("normal" if paper else "auto")
    lopa = LoPAConfig(method=args.method, m=args.m, r=args.r or d.r, hidden=_hidden(args, task, kind),
                      lora_r=args.lora_r, zs_init=zs_init)
    train = TrainConfig(
        lr=args.lr if args.lr is not None else d.learning_rate(args.method, paper=paper),
        epochs=args.epochs or d.epochs,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        warmup_ratio=args.warmup,
        seed=args.seed,
        max_length=args.max_length or d.max_length,
    )
    vf = d.val_fraction if args.val_fraction is None else args.val_fraction
    return Resolved(task, lopa, train, d.model_name(args.model), kind, vf)
