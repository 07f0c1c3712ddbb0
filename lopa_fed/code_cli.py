"""``lopa-fed train`` / ``evaluate`` for the code tasks (CruxEval-O, CruxEval-I, MBPP).

:mod:`lopa_fed.cli` dispatches here when ``--task`` (train) or the checkpoint's
task (evaluate) is a code task. Training is the shared :func:`lopa_fed.train.fit`
on the answer-token LM loss; evaluation is execution-based pass@1
(:func:`lopa_fed.code_eval.evaluate_pass_at_1`).

Code-task defaults (the paper's, LOPA.md "Training settings"). The shared parser
leaves these options unset (``None``); the GLUE path fills in the GLUE column and
this module the code-task column. An explicit value is always kept:

=================  ==========  =============================================
option             GLUE        code task
=================  ==========  =============================================
``--model``        default     ``smollm2`` (SmolLM2-135M-Instruct)
``--kind``         auto        ``causal`` (anything else is an error)
``--r``            4           1
``--hidden``       256         the instance encoder's width h (h′ = h)
``--epochs``       20          5
``--lr``           per method  1e-3 (PT, IDPG, LoPA*), 1e-4 (LoRA, head)
``--max-length``   256         512 (prompt + answer; 1 % of MBPP is longer)
=================  ==========  =============================================

``--test-limit N`` scores pass@1 on the first N test problems (all 400/487 by
default: generation on CPU takes a while).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from .config import ConfigError, LoPAConfig, TrainConfig

#: The paper's code-task settings for options left unset.
CODE_DEFAULTS: dict[str, Any] = {"r": 1, "hidden": None, "epochs": 5, "max_length": 512}
#: Paper learning rates on the code tasks.
CODE_LR = {"pt": 1e-3, "idpg": 1e-3, "lopa": 1e-3, "lora": 1e-4, "head": 1e-4}


def code_lr(method: str) -> float:
    """The paper's code-task learning rate for ``method`` (``lopa-*`` ablations count as LoPA)."""
    base = "lopa" if method.startswith("lopa") else method
    return CODE_LR.get(base, 1e-3)


def resolve_code_args(args: argparse.Namespace) -> dict[str, Any]:
    """Code-task values of the model/optimisation options (see the module docstring).

    Parameters
    ----------
    args : argparse.Namespace
        Parsed ``lopa-fed train`` arguments.

    Returns
    -------
    dict
        ``model``, ``kind``, ``r``, ``hidden`` (``None``: the encoder's width),
        ``epochs``, ``lr``, ``max_length``.

    Raises
    ------
    ConfigError
        ``--kind`` is neither ``auto`` nor ``causal``, or ``--method head``.
    """
    if args.method == "head":
        raise ConfigError(
            "--method head trains a classification head, which a code task does not have; "
            "use pt, idpg, lopa (or an ablation) or lora"
        )
    out: dict[str, Any] = {}
    model = getattr(args, "model", None)
    out["model"] = "smollm2" if model in (None, "default") else model
    kind = getattr(args, "kind", None) or "auto"
    if kind not in ("auto", "causal"):
        raise ConfigError(f"code tasks need a causal LM (--kind causal or auto), got --kind {kind}")
    out["kind"] = "causal"
    for name, default in CODE_DEFAULTS.items():
        value = getattr(args, name, None)
        out[name] = default if value is None else value
    lr = getattr(args, "lr", None)
    out["lr"] = float(lr) if lr is not None else code_lr(args.method)
    return out


def _records_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec) + "\n")


def _summary(res: dict) -> dict:
    return {k: v for k, v in res.items() if k != "records"}


def train_code(args: argparse.Namespace) -> int:
    """``lopa-fed train --task {cruxeval-o,cruxeval-i,mbpp}``.

    Trains on the train half (answer-token LM loss), then reports the test
    answer-token loss and pass@1 on the test half (``--test-limit`` problems).
    Writes ``OUT/metrics.json``, ``OUT/checkpoint/`` and ``OUT/test_results.jsonl``
    (one record per problem: uid, completion, generation, status, reason, seconds).
    """
    from rich.console import Console

    from .checkpoint import save_checkpoint
    from .cli import run_metrics, train_table
    from .code_eval import CODE_LIMITS, code_splits, default_generation, evaluate_loss, evaluate_pass_at_1
    from .code_tasks import get_code_task
    from .model import build_model

    console = Console()
    task = get_code_task(args.task)
    out = Path(args.out)
    opts = resolve_code_args(args)
    t0 = time.perf_counter()
    with console.status(f"loading {opts['model']} and {task.name} data"):
        hidden = opts["hidden"]
        if hidden is None:
            if args.method in ("pt", "lora", "head"):
                hidden = 256  # unused by these methods
            else:
                from .encoder import InstanceEncoder

                hidden = InstanceEncoder.load(args.encoder).hidden_size
        cfg = LoPAConfig(
            method=args.method,
            m=args.m,
            r=opts["r"],
            hidden=hidden,
            lora_r=args.lora_r,
            zs_init=getattr(args, "zs_init", "normal"),
        )
        tcfg = TrainConfig(
            lr=opts["lr"],
            epochs=opts["epochs"],
            max_steps=args.max_steps,
            batch_size=args.batch_size,
            warmup_ratio=args.warmup,
            seed=args.seed,
            max_length=opts["max_length"],
        )
        model = build_model(
            task, cfg, model=opts["model"], encoder=args.encoder, kind="causal", seed=args.seed
        )
        splits = code_splits(
            task.name,
            model.frozen,
            data_dir=args.data_dir,
            seed=args.seed,
            max_length=opts["max_length"],
            train_limit=args.train_limit,
            test_limit=args.test_limit,
        )
    load_s = time.perf_counter() - t0
    console.print(
        f"[bold]{task.name}[/] {cfg.method}: {len(splits.train)} train / {len(splits.test)} test problems, "
        f"{model.num_trainable():,} trainable parameters, frozen {model.frozen.identity} "
        f"(loaded in {load_s:.1f}s); lr {tcfg.lr:g}, r {cfg.r}, h' {cfg.hidden}, {tcfg.epochs} epochs"
    )
    from .train import fit

    result = fit(
        model, splits.train, tcfg, progress=not args.no_progress, description=f"{task.name}/{cfg.method}"
    )
    test_loss = evaluate_loss(model, splits.test, tcfg.eval_batch_size)
    gen = default_generation(task)
    t1 = time.perf_counter()
    res = evaluate_pass_at_1(
        model,
        task,
        splits.test_examples,
        generation=gen,
        max_prompt_length=opts["max_length"],
        progress=not args.no_progress,
    )
    eval_s = time.perf_counter() - t1
    test = {**_summary(res), "loss": test_loss["loss"], "answer_tokens": test_loss["answer_tokens"]}
    metrics = run_metrics(
        task.name,
        model,
        result,
        eval_seconds=eval_s,
        test=test,
        config={"lopa": cfg.to_dict(), "train": tcfg.to_dict(), "sandbox": CODE_LIMITS.__dict__},
        data={"train": len(splits.train), "test": len(splits.test)},
    )
    out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(
        out / "checkpoint", model, task=task.name, train=tcfg.to_dict(), generation=res["generation"]
    )
    _records_jsonl(out / "test_results.jsonl", res["records"])
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))

    table = train_table(task.name, model, result)
    table.add_row("test answer-token loss", f"{test_loss['loss']:.4f}")
    table.add_row(f"test pass@1 ({res['num_problems']} problems)", f"{100 * res['pass_at_1']:.2f}")
    table.add_row("pass / fail / timeout / error", " / ".join(str(v) for v in res["status_counts"].values()))
    table.add_row("eval time", f"{eval_s:.1f}s")
    console.print(table)
    console.print(f"wrote {out / 'metrics.json'}, {out / 'test_results.jsonl'} and {out / 'checkpoint'}/")
    return 0


def load_code_model(directory: str | Path):
    """Rebuild the prompted model a code-task checkpoint describes and load its tensors.

    Returns
    -------
    tuple
        ``(model, task, config)``: :class:`~lopa_fed.model.PromptedModel`,
        :class:`~lopa_fed.code_tasks.CodeTask` and the checkpoint's config dict.
    """
    from .checkpoint import load_checkpoint, read_config
    from .cli import _name
    from .code_tasks import get_code_task
    from .model import build_model

    cfg = read_config(directory)
    task = get_code_task(cfg["task"])
    lcfg = LoPAConfig.from_dict(cfg["lopa"])
    model = build_model(
        task,
        lcfg,
        model=_name(cfg["frozen_model"]),
        encoder=_name(cfg.get("encoder") or "default"),
        kind=cfg["frozen_kind"],
    )
    load_checkpoint(directory, model)
    return model, task, cfg


def evaluate_code(args: argparse.Namespace, checkpoint_dir: str | Path) -> int:
    """``lopa-fed evaluate`` for a code-task checkpoint: pass@1 plus per-problem JSONL.

    ``--split dev`` (the default) scores the test half, ``--split train`` the
    train half, of the checkpoint's seeded 50/50 split; ``--limit N`` the first
    N problems. Records go to ``--out`` if the parser has it, else to
    ``<checkpoint>/../eval_<split>.jsonl``.
    """
    from rich.console import Console

    from .code_eval import default_generation, evaluate_pass_at_1
    from .generate import GenerationConfig

    directory = Path(checkpoint_dir)
    model, task, cfg = load_code_model(directory)
    train_cfg = cfg.get("train") or {}
    seed = int(train_cfg.get("seed", 9876))
    max_length = int(train_cfg.get("max_length", CODE_DEFAULTS["max_length"]))
    train_ex, test_ex = task.split(task.read(args.data_dir), seed=seed)
    split = "test" if getattr(args, "split", "dev") in ("dev", "test") else "train"
    examples = test_ex if split == "test" else train_ex
    gen = default_generation(task)
    saved = cfg.get("generation")
    if isinstance(saved, dict):
        gen = GenerationConfig(**{**saved, "stop": tuple(saved.get("stop", ()))})
    res = evaluate_pass_at_1(
        model, task, examples, limit=args.limit, generation=gen, max_prompt_length=max_length
    )
    out = getattr(args, "out", None)
    path = Path(out) if out else directory.resolve().parent / f"eval_{split}.jsonl"
    _records_jsonl(path, res["records"])
    summary = {"task": task.name, "method": cfg["lopa"]["method"], "split": split, **_summary(res)}
    summary["results"] = str(path)
    if getattr(args, "json", False):
        print(json.dumps(summary))
    else:
        Console().print(
            f"[bold]{task.name}[/] {summary['method']} {split}: pass@1 {100 * res['pass_at_1']:.2f} "
            f"on {res['num_problems']} problems {res['status_counts']} "
            f"(generation {res['generation_seconds']:.1f}s, execution {res['execution_seconds']:.1f}s); "
            f"wrote {path}"
        )
    return 0
