"""Why a trained head hides the prompt: classifier-setting dev accuracy with the prompt and with it removed.

In the MiniLM ``classifier`` setting every method also trains a head on the pooled output. This
bench trains each prompt method there (SST-2, the same seeded train subset for every method and
seed), then scores the *same* trained model on the full dev set twice: with its prompt, and with
the prompt generator removed, so the frozen model sees the bare sentence and the trained head reads
it. If the two scores are close, the head, not the prompt, does the work. ``head`` (no prompt) is
the reference row.

The contrast is the paper's setting (``bench/quality.py``, causal): there nothing but the prompt
is trained, so removing it leaves the untouched frozen model, whose score is the zero-shot row.
That row is read from the causal result file, not retrained.

Learning rates: each method's selection in the classifier ``--budget medium`` result
(``--points-from``, default ``bench/results/quality-medium.json``).

    .venv/bin/python bench/prompt_removed.py --threads 2 --resume      # 4 methods × 3 seeds, ~2 min per run
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common  # noqa: E402

METHODS = ("head", "pt", "idpg", "lopa")
LABEL = {"head": "head only (no prompt)", "pt": "PT", "idpg": "IDPG", "lopa": "LoPA (m=10, r=4)"}


@contextlib.contextmanager
def prompt_removed(net) -> Iterator[None]:
    """Within the block, ``net`` runs with no prompt generator (Z = None: the frozen model sees x alone)."""
    gen = net.prompt
    net.prompt = None
    try:
        yield
    finally:
        net.prompt = gen


def points(path: Path, methods: tuple[str, ...]) -> dict[str, float]:
    """Each method's selected lr on SST-2 in a classifier quality result. Raises ``ValueError`` (one line)."""
    try:
        ms = json.loads(path.read_text())["summary"]["main"]["sst2"]
        return {m: float(ms[m]["lr"]) for m in methods}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"--points-from {path}: no SST-2 lr for each of {', '.join(methods)} "
                         f"({type(exc).__name__}: {exc})") from None


def run_one(method: str, lr: float, seed: int, splits, args) -> dict:
    """Train ``method`` (classifier setting; :func:`bench.quality.run_one`) and score dev with and without its prompt."""
    from bench.quality import run_one as train_and_score
    from lopa_fed import evaluate

    budget = {"epochs": args.epochs, "batch": 16, "max_length": 128}
    rec = train_and_score(method, splits.train.task, splits, lr, seed, budget, keep_state=True)
    net = rec.pop("_net")
    bare = rec["dev"]
    if net.prompt is not None:
        with prompt_removed(net):
            bare = evaluate(net, splits.test, batch_size=32)["score"]
    keep = ("method", "lr", "seed", "trainable_params", "steps", "examples_seen", "train_loss", "val", "seconds")
    return {k: rec[k] for k in keep} | {"dev": 100 * rec["dev"], "dev_prompt_removed": 100 * bare}


def summarise(runs: list[dict]) -> dict[str, dict]:
    out = {}
    for m in METHODS:
        rs = [r for r in runs if r["method"] == m]
        if rs:
            (a, sa), (b, sb) = common.mean_std([r["dev"] for r in rs]), common.mean_std([r["dev_prompt_removed"] for r in rs])
            out[m] = {"dev": a, "dev_std": sa, "removed": b, "removed_std": sb, "n": len(rs), "lr": rs[0]["lr"],
                      "trainable_params": rs[0]["trainable_params"], "steps": rs[0]["steps"],
                      "drop": [r["dev"] - r["dev_prompt_removed"] for r in rs]}
    return out


def causal_contrast(path: Path) -> dict | None:
    """PT and LoPA in the causal setting, and the zero-shot row that removing their prompt leaves, if ``path`` has them."""
    try:
        ms = json.loads(path.read_text())["summary"]["main"]["sst2"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if "zero-shot" not in ms:
        return None
    return {"file": path.name, "zero_shot": ms["zero-shot"]["mean"],
            **{m: {"dev": ms[m]["mean"], "dev_std": ms[m]["std"], "n": ms[m]["n"], "steps": ms[m]["steps"]}
               for m in ("pt", "lopa") if m in ms}}


def render(summary: dict, contrast: dict | None, dev: str = "full dev") -> str:
    rows = [[LABEL[m], f"{x['trainable_params']:,}", f"{x['dev']:.1f} ± {x['dev_std']:.1f}",
             f"{x['removed']:.1f} ± {x['removed_std']:.1f}" if m != "head" else "– (no prompt)",
             f"{sum(x['drop']) / len(x['drop']):+.1f}" if m != "head" else "–", x["n"]] for m, x in summary.items()]
    lines = [f"MiniLM classifier setting (a trained head on the pooled output), SST-2 {dev}:",
             common.markdown_table(["method", "trainable", "dev, with its prompt", "dev, prompt removed",
                                    "with − removed", "seeds"], rows)]
    if contrast:
        lines.append(f"\nCausal setting ({contrast['file']}; nothing but the prompt is trained, so removing it "
                     f"leaves the zero-shot model, {contrast['zero_shot']:.1f}):")
        lines += [f"  {LABEL[m]}: {c['dev']:.1f} with its prompt → {contrast['zero_shot']:.1f} removed "
                  f"({c['dev'] - contrast['zero_shot']:+.1f})" for m, c in contrast.items() if m in ("pt", "lopa")]
    return "\n".join(lines)


def plot(summary: dict, contrast: dict | None, out: Path, name: str) -> None:
    plt = common.plt()
    fig, ax = plt.subplots(figsize=(9, 4.8))
    bars = [(f"{LABEL[m].split(' (')[0]}\nclassifier", x["dev"], x["dev_std"], x["removed"], x["removed_std"])
            for m, x in summary.items()]
    if contrast:
        bars += [(f"{LABEL[m].split(' (')[0]}\ncausal\n(paper's setting)", c["dev"], c["dev_std"], contrast["zero_shot"], 0.0)
                 for m, c in contrast.items() if m in ("pt", "lopa")]
    xs = range(len(bars))
    ax.bar([x - 0.2 for x in xs], [b[1] for b in bars], 0.4, yerr=[b[2] for b in bars], capsize=3, label="with its prompt")
    ax.bar([x + 0.2 for x in xs], [b[3] for b in bars], 0.4, yerr=[b[4] for b in bars], capsize=3,
           label="prompt removed (same trained model)")
    ax.set_xticks(list(xs), [b[0] for b in bars], fontsize=8)
    ax.set_ylim(max(0.0, min(v for b in bars for v in (b[1], b[3])) - 8), 95)
    ax.set_ylabel("SST-2 dev accuracy % (full dev; mean ± std over seeds)")
    ax.set_title("SST-2: the same trained model with its prompt and with the prompt removed")
    ax.legend(fontsize=8, loc="upper left")
    common.save_fig(fig, name, out)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    ap.add_argument("--train", type=int, default=4000, help="train examples (seeded subset; default 4000)")
    ap.add_argument("--epochs", type=int, default=1, help="epochs over them (default 1: 250 steps at batch 16)")
    ap.add_argument("--dev", type=int, default=0, help="score the first N dev rows only (default 0: all 872)")
    ap.add_argument("--points-from", default=str(common.RESULTS / "quality-medium.json"), metavar="JSON",
                    help="classifier quality result whose SST-2 lr each method uses")
    ap.add_argument("--causal-from", default=str(common.RESULTS / "quality-causal-medium.json"), metavar="JSON",
                    help="causal quality result for the contrast (its zero-shot, PT and LoPA rows)")
    common.add_result_args(ap, "prompt-removed")
    args = ap.parse_args(argv)
    methods = tuple(args.methods.split(","))
    if bad := [m for m in methods if m not in METHODS]:
        ap.error(f"--methods: unknown {', '.join(bad)}; choose from {', '.join(METHODS)}")
    try:
        seeds = tuple(int(s) for s in args.seeds.split(","))
        lrs = points(Path(args.points_from), methods)
    except ValueError as exc:
        ap.error(str(exc) if "points-from" in str(exc) else f"--seeds {args.seeds!r}: expected integers")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from lopa_fed import get_task, load_splits
    from lopa_fed.backbone import FrozenModel

    out, name = Path(args.out_dir), args.name or "prompt-removed"
    meta, load0 = common.metadata(seeds=seeds), common.start_load()
    sources = [out / f"{name}.json"] if args.resume and (out / f"{name}.json").is_file() else []
    try:
        prev = common.read_runs([*sources, *args.merge], lambda r: (r["method"], r["seed"]), meta, name)
    except ValueError as exc:
        ap.error(str(exc))
    runs: list[dict] = list(prev.values())
    done = set(prev)
    protocol = {"setting": "MiniLM classifier (frozen all-MiniLM-L6-v2 + a trained 2-class head on the pooled output)",
                "task": "sst2", "train": args.train, "epochs": args.epochs, "batch": 16, "max_length": 128,
                "lr": lrs, "lr_from": Path(args.points_from).name, "dev": args.dev or "all (872)",
                "removed": "the same trained model with its prompt generator removed (Z = None)"}
    contrast = causal_contrast(Path(args.causal_from))
    task = get_task("sst2")
    splits = load_splits(task, FrozenModel.load("default"), max_length=128, train_limit=args.train,
                         test_limit=args.dev or None)

    def save(final: bool = False) -> dict:
        if final:
            meta["machine"]["load_average_end"] = common.load_average()
            meta["contention"] = common.contention_note(load0, meta["machine"]["load_average_end"], own=args.threads or None)
        data = {"meta": meta, "protocol": protocol, "runs": runs, "summary": summarise(runs), "causal": contrast}
        common.write_json(name, data, out)
        return data

    with common.progress() as bar:
        todo = [(m, s) for s in seeds for m in methods if (m, s) not in done]
        t = bar.add_task("prompt removed", total=len(todo))
        for m, s in todo:
            bar.update(t, description=f"{m} seed {s}")
            runs.append(run_one(m, lrs[m], s, splits, args))
            save()
            bar.advance(t)
    data = save(final=True)
    print(render(data["summary"], contrast, f"dev[:{args.dev}]" if args.dev else "full dev"))
    plot(data["summary"], contrast, out, name)
    return data


if __name__ == "__main__":
    main()
