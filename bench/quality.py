"""Quality on GLUE (SST-2, RTE, MRPC): every method on the same example budget, tuned lr, 3 seeds.

Two settings:

* ``--setting causal`` (the default, the paper's setting): frozen SmolLM2-135M-Instruct read
  through the next-token verbalizer, no trainable head, MiniLM as the frozen instance encoder;
  zero-shot, PT, IDPG, LoPA, LoRA r=16/8, the Zs-initialisation comparison and learning curves.
  Implemented in ``bench/quality_causal.py`` (its docstring holds the protocol);
  result ``quality-causal-<budget>.json`` unless ``--name`` is given.

      .venv/bin/python bench/quality.py --budget smoke --threads 1
      .venv/bin/python bench/quality.py --budget small --threads 1 --name quality-causal --resume --deadline 13:40
      .venv/bin/python bench/quality.py --budget large --threads 2 --resume \
          --points-from bench/results/quality-causal.json --methods pt,lopa     # 500 steps, no second grid
      .venv/bin/python bench/quality_steps.py     # dev accuracy against steps over the 125/250/500-step files

* ``--setting classifier``: the documented MiniLM variant below (every method also trains a
  2-class head on the pooled output, which hides the prompt). Result ``quality-<budget>.json``.

Classifier protocol
-------------------
* Frozen model and instance encoder: the packaged all-MiniLM-L6-v2 (classifier kind: a
  2-class head on the masked-mean pooled text states, trained by every method).
* Methods: ``head`` (head only), ``pt``, ``idpg``, ``lopa`` (m=10, r=4), ``lora16`` and
  ``lora8`` (peft on q/k/v), ``fft`` (full fine-tuning of a private copy of MiniLM + the
  head, same loss; implemented here, not in the core), and the LoPA ablations
  (``lopa-add``, ``lopa-max``, ``lopa-concat``, ``lopa-instance``) on one task.
* Same budget for every method: the same seeded subset of train, the same epochs and
  batch size (hence the same number of examples seen).
* Learning rate: a 3-point grid per method, run on seed 0 only, selected by the task
  metric on the held-out train slice (``load_splits(...).val``); the selected lr is then
  run with the remaining seeds. The GLUE dev metric (accuracy; F1 for MRPC) is reported,
  mean ± std over seeds.
* Decoder row: SmolLM2-135M as a causal LM with the next-token verbalizer, LoPA vs PT
  on SST-2, on a very small budget with a fixed lr (the paper's code-task lr, 1e-3).

Results are written after every run (``--resume`` skips finished runs), so a long
``--budget full`` run can be stopped and resumed.

    .venv/bin/python bench/quality.py --setting classifier --budget smoke     # seconds-to-minutes, proves it runs
    .venv/bin/python bench/quality.py --setting classifier --budget small     # ~40 min on 2 free cores
    .venv/bin/python bench/quality.py --setting classifier --budget medium --methods head,pt,lopa,lora16 \
        --no-ablations --no-decoder                                         # SST-2 only, 4× the examples
    .venv/bin/python bench/quality.py --setting classifier --budget full      # hours
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common  # noqa: E402

TASKS = ("sst2", "rte", "mrpc")
MAIN_METHODS = ("head", "pt", "idpg", "lopa", "lora16", "lora8", "fft")
ABLATIONS = ("lopa-add", "lopa-max", "lopa-concat", "lopa-instance")
LR_GRID = {
    # Grids were widened upward after a first pass picked the top lr for head, PT, IDPG and
    # LoPA on this small budget (32 optimizer steps).
    "head": (3e-3, 1e-2, 3e-2),
    "pt": (3e-3, 1e-2, 3e-2),
    "idpg": (1e-3, 3e-3, 1e-2),
    "lopa": (1e-3, 3e-3, 1e-2),
    "lora16": (3e-4, 1e-3, 3e-3),
    "lora8": (3e-4, 1e-3, 3e-3),
    "fft": (2e-5, 5e-5, 1e-4),
    **{a: (1e-3, 3e-3, 1e-2) for a in ABLATIONS},
}
#: LOPA.md, "Published results": GLUE dev, RoBERTa-large, m=10 (MRPC is F1).
PAPER = {
    "pt": {"sst2": 84.40, "mrpc": 72.38, "rte": 53.07, "params": "0.01M"},
    "idpg": {"sst2": 95.30, "mrpc": 78.60, "rte": 77.26, "params": "2.89M"},
    "lora16": {"sst2": 96.22, "mrpc": 90.77, "rte": 85.66, "params": "~2.4M"},
    "lopa": {"sst2": 95.99, "mrpc": 91.09, "rte": 83.39, "params": "1.60M"},
}
BUDGETS = {
    # train examples (seeded subset), epochs, batch, val examples, dev examples (None = all), max length, seeds
    "smoke": dict(train=16, epochs=1, batch=8, val=16, dev=16, max_length=64, seeds=(0,), grid=1,
                  tasks=("sst2",), ablation_task="sst2", decoder=dict(train=8, dev=8, batch=4, seeds=(0,))),
    "small": dict(train=256, epochs=2, batch=16, val=128, dev=None, max_length=128, seeds=(0, 1, 2), grid=3,
                  tasks=TASKS, ablation_task="sst2", decoder=dict(train=96, dev=200, batch=8, seeds=(0, 1, 2))),
    "medium": dict(train=1000, epochs=2, batch=16, val=200, dev=None, max_length=128, seeds=(0, 1, 2), grid=3,
                   tasks=("sst2",), ablation_task="sst2", decoder=dict(train=96, dev=200, batch=8, seeds=(0, 1, 2))),
    "full": dict(train=2000, epochs=3, batch=16, val=500, dev=None, max_length=256, seeds=(0, 1, 2), grid=3,
                 tasks=TASKS, ablation_task="rte", decoder=dict(train=500, dev=872, batch=8, seeds=(0, 1, 2))),
}
DECODER_LR = 1e-3


class FFTModel:
    """Full fine-tuning: a private, trainable copy of the frozen MiniLM plus the same head and loss."""

    def __new__(cls, frozen, num_labels: int = 2, seed: int = 0):
        import torch
        from torch import nn

        from lopa_fed.backbone import FrozenModel
        from lopa_fed.model import Output

        class _FFT(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.config = SimpleNamespace(method="fft")
                torch.manual_seed(seed)
                self.body = FrozenModel(copy.deepcopy(frozen.model), frozen.tokenizer, "classifier", frozen.identity)
                self.body.model.requires_grad_(True)
                self.head = nn.Linear(frozen.d, num_labels)
                nn.init.normal_(self.head.weight, std=0.02)
                nn.init.zeros_(self.head.bias)

            def trainable_parameters(self):
                return [p for p in self.parameters() if p.requires_grad]

            def num_trainable(self) -> int:
                return sum(p.numel() for p in self.trainable_parameters())

            def state(self):
                return {k: v.detach().clone() for k, v in self.state_dict().items()}

            def load_state(self, sd):
                self.load_state_dict(sd)

            def forward(self, batch, z=None):
                out = self.body(None, batch["input_ids"], batch["attention_mask"])
                logits = self.head(out.pooled)
                loss = nn.functional.cross_entropy(logits, batch["labels"])
                return Output(loss=loss, logits=logits, preds=logits.argmax(-1))

        return _FFT()


def make_model(method: str, task, seed: int, model: str = "default"):
    from lopa_fed import LoPAConfig, build_model
    from lopa_fed.backbone import FrozenModel

    if method == "fft":
        return FFTModel(FrozenModel.load(model), num_labels=task.num_labels, seed=seed)
    if method.startswith("lora"):
        cfg = LoPAConfig(method="lora", lora_r=int(method[4:]))
    else:
        cfg = LoPAConfig(method=method, m=10, r=4, hidden=256)
    return build_model(task, cfg, model=model, seed=seed)


def run_one(method, task, splits, lr, seed, b, model="default", eval_dev=True, keep_state=False) -> dict:
    from lopa_fed import TrainConfig, evaluate, fit

    t0 = time.perf_counter()
    net = make_model(method, task, seed, model)
    cfg = TrainConfig(lr=lr, epochs=b["epochs"], batch_size=b["batch"], seed=seed, max_length=b["max_length"],
                      eval_batch_size=32)
    tr = fit(net, splits.train, cfg)
    val = evaluate(net, splits.val, batch_size=32)
    dev = evaluate(net, splits.test, batch_size=32) if eval_dev else None
    rec = {
        "method": method, "task": task.name, "lr": lr, "seed": seed, "trainable_params": int(net.num_trainable()),
        "train_loss": tr["loss"], "first_loss": tr["first_loss"], "steps": tr["steps"],
        "examples_seen": tr["examples_seen"], "train_seconds": tr["seconds"],
        "examples_per_second": tr["examples_per_second"],
        "val": val["score"], "dev": dev["score"] if dev else None,
        "dev_metrics": {k: v for k, v in dev.items() if k != "num_examples"} if dev else None,
        "seconds": time.perf_counter() - t0,
    }
    if keep_state:
        return rec | {"_net": net}
    return rec


def _key(r: dict) -> tuple:
    return (r["group"], r["task"], r["method"], r["lr"], r["seed"])


def classifier_main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--setting", choices=("classifier",), default="classifier")
    ap.add_argument("--budget", choices=tuple(BUDGETS), default="small")
    ap.add_argument("--tasks", default=None, help="comma-separated subset of sst2,rte,mrpc")
    ap.add_argument("--methods", default=None, help="comma-separated subset of " + ",".join(MAIN_METHODS))
    ap.add_argument("--no-ablations", action="store_true")
    ap.add_argument("--no-decoder", action="store_true")
    common.add_result_args(ap, "quality-<budget>")
    args = ap.parse_args(argv)

    import json

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from lopa_fed import evaluate, get_task, load_splits
    from lopa_fed.backbone import FrozenModel

    b = BUDGETS[args.budget]
    name = args.name or f"quality-{args.budget}"
    out = Path(args.out_dir)
    tasks = tuple(args.tasks.split(",")) if args.tasks else b["tasks"]
    methods = tuple(args.methods.split(",")) if args.methods else MAIN_METHODS
    seeds = tuple(b["seeds"])
    load0 = common.start_load()
    meta = common.metadata(seeds=seeds)
    prev: dict[tuple, dict] = {}
    sources = [Path(f) for f in args.merge]
    if args.resume and (out / f"{name}.json").is_file():
        sources.insert(0, out / f"{name}.json")
    for src in sources:
        if not src.is_file():
            ap.error(f"--merge: no such result file: {src}")
        old = json.loads(src.read_text())
        prev.update({_key(r): r for r in old.get("runs", [])})
        if src.name != f"{name}.json":  # provenance of runs measured by another invocation
            om = old.get("meta", {})
            meta.setdefault("merged_from", []).append(
                {"file": src.name, **{k: om.get(k) for k in ("command", "commit", "dirty", "date", "contention")},
                 "load_average_start": om.get("machine", {}).get("load_average"),
                 "load_average_end": om.get("machine", {}).get("load_average_end")}
            )
    runs: list[dict] = list(prev.values())
    protocol = {
        "budget": args.budget, **{k: v for k, v in b.items() if k != "decoder"}, "decoder": b["decoder"],
        "lr_grid": {m: list(LR_GRID[m]) for m in (*methods, *ABLATIONS)}, "decoder_lr": DECODER_LR,
        "selection": "lr grid on seed 0 only, best task metric on the held-out train slice (val); other seeds reuse it",
        "report": "GLUE dev metric (accuracy; F1 for MRPC), mean ± std over seeds",
        "model": "all-MiniLM-L6-v2 (frozen model and instance encoder), classifier kind",
        "warmup": "6% linear warmup then constant (lopa_fed.train.fit); AdamW, no weight decay; grad clip 1.0",
        "data": "same seeded train subset for every method and seed (split seed 9876); seeds vary init and order",
    }

    def save(final: bool = False) -> dict:
        data = {"meta": meta, "protocol": protocol, "runs": [{k: v for k, v in r.items() if not k.startswith("_")} for r in runs]}
        data["summary"] = summarise(data["runs"])
        if final:
            load1 = common.load_average()
            meta["machine"]["load_average_end"] = load1
            meta["contention"] = common.contention_note(load0, load1)
        common.write_json(name, data, out)
        return data

    plan: list[tuple[str, str, str]] = [("main", t, m) for t in tasks for m in methods]
    if not args.no_ablations and b["ablation_task"] in tasks:
        plan += [("ablation", b["ablation_task"], a) for a in ABLATIONS]
    n_total = sum(b["grid"] + len(seeds) - 1 for _ in plan) + (0 if args.no_decoder else 2 * len(b["decoder"]["seeds"]))
    frozen = FrozenModel.load("default")
    split_cache = {}
    with common.progress() as bar:
        pt = bar.add_task(f"quality ({args.budget})", total=n_total)
        for group, tname, method in plan:
            task = get_task(tname)
            if tname not in split_cache:
                sp = load_splits(task, frozen, max_length=b["max_length"], train_limit=b["train"], test_limit=b["dev"])
                if b["val"] is not None and len(sp.val) > b["val"]:
                    sp.val = sp.val.subset(range(b["val"]))
                split_cache[tname] = sp
            splits = split_cache[tname]
            grid = LR_GRID[method][: b["grid"]] if b["grid"] < 3 else LR_GRID[method]
            if b["grid"] == 1:
                grid = (LR_GRID[method][1],)
            # 1) grid on seed 0 (val only), keeping the best model to evaluate on dev
            best, best_net = None, None
            for lr in grid:
                k = (group, tname, method, lr, seeds[0])
                bar.update(pt, description=f"{tname} {method} lr={lr:g} seed {seeds[0]}")
                if k in prev:
                    rec = prev[k]
                else:
                    rec = run_one(method, task, splits, lr, seeds[0], b, eval_dev=False, keep_state=True)
                    rec["group"] = group
                    rec["grid"] = True
                    runs.append(rec)
                if best is None or rec["val"] > best["val"]:
                    if best is not None:
                        best["selected"] = False
                    best, best_net = rec, rec.pop("_net", None)
                    best["selected"] = True
                else:
                    rec["selected"] = False
                    rec.pop("_net", None)
                save()
                bar.advance(pt)
            if best.get("dev") is None:
                if best_net is None:  # resumed after the grid but before its dev evaluation: retrain (seeded)
                    best_net = run_one(method, task, splits, best["lr"], seeds[0], b, eval_dev=False,
                                       keep_state=True)["_net"]
                dev = evaluate(best_net, splits.test, batch_size=32)
                best["dev"] = dev["score"]
                best["dev_metrics"] = {kk: v for kk, v in dev.items() if kk != "num_examples"}
                save()
            del best_net
            # 2) remaining seeds at the selected lr
            for seed in seeds[1:]:
                k = (group, tname, method, best["lr"], seed)
                bar.update(pt, description=f"{tname} {method} lr={best['lr']:g} seed {seed}")
                if k not in prev:
                    rec = run_one(method, task, splits, best["lr"], seed, b)
                    rec.update(group=group, grid=False, selected=True)
                    runs.append(rec)
                save()
                bar.advance(pt)
        if not args.no_decoder:
            db = b["decoder"]
            task = get_task("sst2")
            dfrozen = FrozenModel.load("smollm2")
            dsplits = load_splits(task, dfrozen, max_length=b["max_length"], train_limit=db["train"], test_limit=db["dev"])
            dsplits.val = dsplits.val.subset(range(min(len(dsplits.val), db["dev"])))
            bdec = dict(b, batch=db["batch"], epochs=1)
            for method in ("pt", "lopa"):
                for seed in db["seeds"]:
                    k = ("decoder", "sst2", method, DECODER_LR, seed)
                    bar.update(pt, description=f"decoder sst2 {method} seed {seed}")
                    if k not in prev:
                        rec = run_one(method, task, dsplits, DECODER_LR, seed, bdec, model="smollm2")
                        rec.update(group="decoder", grid=False, selected=True, model="SmolLM2-135M (causal verbalizer)")
                        runs.append(rec)
                    save()
                    bar.advance(pt)
    data = save(final=True)
    print(render(data))
    plot(data, out, name)
    del torch
    return data


def summarise(runs: list[dict]) -> dict:
    """``{group: {task: {method: {mean, std, n, lr, trainable_params, val}}}}`` over the selected runs."""
    out: dict = {}
    for r in runs:
        if not r.get("selected") or r.get("dev") is None:
            continue
        g = out.setdefault(r["group"], {}).setdefault(r["task"], {}).setdefault(r["method"], {"devs": [], "vals": []})
        g["devs"].append(100 * r["dev"])
        g["vals"].append(100 * r["val"])
        g["lr"] = r["lr"]
        g["trainable_params"] = r["trainable_params"]
        g.setdefault("seconds", []).append(r["seconds"])
    for tasks in out.values():
        for ms in tasks.values():
            for s in ms.values():
                s["mean"], s["std"] = common.mean_std(s["devs"])
                s["n"] = len(s["devs"])
                s["seconds_per_run"] = common.median(s.pop("seconds"))
    return out


def orderings(summary: dict, tol: float = 1.0) -> list[dict]:
    """Which of PT < IDPG < LoPA ≈ LoRA(r=16) hold per task (≈: |diff| <= max(tol, pooled std))."""
    res = []
    for task, ms in summary.get("main", {}).items():
        def g(m, ms=ms):
            return ms.get(m, {}).get("mean")

        pt, idpg, lopa, lora = g("pt"), g("idpg"), g("lopa"), g("lora16")
        row = {"task": task}
        if None not in (pt, idpg):
            row["PT < IDPG"] = pt < idpg
        if None not in (idpg, lopa):
            row["IDPG < LoPA"] = idpg < lopa
        if None not in (lopa, lora):
            band = max(tol, ms["lopa"]["std"], ms["lora16"]["std"])
            row["LoPA ≈ LoRA"] = abs(lopa - lora) <= band
            row["LoPA - LoRA"] = round(lopa - lora, 2)
        if None not in (pt, lopa):
            row["PT < LoPA"] = pt < lopa
        res.append(row)
    return res


LABEL = {"head": "head only", "pt": "PT", "idpg": "IDPG", "lopa": "LoPA (m=10, r=4)", "lora16": "LoRA r=16",
         "lora8": "LoRA r=8", "fft": "FFT", "lopa-add": "LoPA-add", "lopa-max": "LoPA-max",
         "lopa-concat": "LoPA-concat", "lopa-instance": "LoPA instance-only"}


def render(data: dict) -> str:
    s = data["summary"]
    p = data["protocol"]
    lines = []
    main = s.get("main", {})
    tasks = [t for t in TASKS if t in main]
    methods = [m for m in (*MAIN_METHODS,) if any(m in main[t] for t in tasks)]
    hdr = ["method", "trainable"] + [f"{t.upper()} ours" for t in tasks] + ["lr (" + "/".join(tasks) + ")"] + \
          [f"{t.upper()} paper" for t in tasks]
    rows = []
    for m in methods:
        cells = [LABEL.get(m, m)]
        tp = next((main[t][m]["trainable_params"] for t in tasks if m in main[t]), None)
        cells.append(f"{tp:,}" if tp is not None else "")
        for t in tasks:
            x = main[t].get(m)
            n_note = f" (n={x['n']})" if x and x["n"] < len(p["seeds"]) else ""
            cells.append(f"{x['mean']:.1f} ± {x['std']:.1f}{n_note}" if x else "")
        cells.append("/".join(f"{main[t][m]['lr']:g}" if m in main[t] else "-" for t in tasks))
        for t in tasks:
            cells.append(f"{PAPER[m][t]:.2f}" if m in PAPER else "")
        rows.append(cells)
    lines.append(f"GLUE dev ({'MRPC F1, others accuracy'}), MiniLM, budget {p['budget']}: {p['train']} train examples × "
                 f"{p['epochs']} epochs, batch {p['batch']}, max length {p['max_length']}, seeds {p['seeds']}; "
                 "paper = RoBERTa-large (LOPA.md)")
    lines.append(common.markdown_table(hdr, rows))
    if "ablation" in s:
        for t, ms in s["ablation"].items():
            rows = [(LABEL.get(m, m), f"{x['trainable_params']:,}", f"{x['mean']:.1f} ± {x['std']:.1f}", f"{x['lr']:g}")
                    for m, x in ms.items()]
            if "lopa" in main.get(t, {}):
                x = main[t]["lopa"]
                rows.insert(0, ("LoPA (gate)", f"{x['trainable_params']:,}", f"{x['mean']:.1f} ± {x['std']:.1f}", f"{x['lr']:g}"))
            if "pt" in main.get(t, {}):
                x = main[t]["pt"]
                rows.append(("task-only (= PT)", f"{x['trainable_params']:,}", f"{x['mean']:.1f} ± {x['std']:.1f}", f"{x['lr']:g}"))
            lines.append(f"\nAblations on {t.upper()} (dev):")
            lines.append(common.markdown_table(["variant", "trainable", "dev", "lr"], rows))
    if "decoder" in s:
        for t, ms in s["decoder"].items():
            rows = [(LABEL.get(m, m), f"{x['trainable_params']:,}", f"{x['mean']:.1f} ± {x['std']:.1f}", x["n"])
                    for m, x in ms.items()]
            d = p["decoder"]
            lines.append(f"\nDecoder: SmolLM2-135M, causal verbalizer, {t.upper()} dev[:{d['dev']}], "
                         f"{d['train']} train examples, 1 epoch, lr {DECODER_LR:g}:")
            lines.append(common.markdown_table(["method", "trainable", "dev acc", "seeds"], rows))
    ords = orderings(s)
    if ords:
        lines.append("\nPaper orderings (PT < IDPG < LoPA ≈ LoRA r=16), per task:")
        keys = ["PT < IDPG", "IDPG < LoPA", "LoPA ≈ LoRA", "LoPA - LoRA", "PT < LoPA"]
        lines.append(common.markdown_table(["task", *keys], [[o["task"], *[o.get(k, "") for k in keys]] for o in ords]))
    if data["meta"].get("contention"):
        lines.append("\nNote: " + data["meta"]["contention"])
    return "\n".join(lines)


def plot(data: dict, out: Path, name: str) -> None:
    s = data["summary"].get("main", {})
    if not s:
        return
    plt = common.plt()
    tasks = [t for t in TASKS if t in s]
    methods = [m for m in MAIN_METHODS if any(m in s[t] for t in tasks)]
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 4), squeeze=False)
    for ax, t in zip(axes[0], tasks):
        ms = [m for m in methods if m in s[t]]
        ax.bar(range(len(ms)), [s[t][m]["mean"] for m in ms], yerr=[s[t][m]["std"] for m in ms], capsize=3)
        for i, m in enumerate(ms):
            if m in PAPER:
                ax.plot(i, PAPER[m][t], "k_", markersize=18)
        ax.set_xticks(range(len(ms)), [LABEL.get(m, m).split(" (")[0] for m in ms], rotation=35, fontsize=8)
        ax.set_title(f"{t.upper()} dev ({'F1' if t == 'mrpc' else 'acc'}); — = paper RoBERTa-L")
        ax.set_ylim(0, 100)
    common.save_fig(fig, name, out)


def main(argv: list[str] | None = None) -> dict:
    """``--setting causal`` (default, the paper's setting) or ``--setting classifier`` (MiniLM + head)."""
    args = list(sys.argv[1:] if argv is None else argv)
    setting = "causal"
    for i, a in enumerate(args):
        if a == "--setting" and i + 1 < len(args):
            setting = args[i + 1]
        elif a.startswith("--setting="):
            setting = a.split("=", 1)[1]
    if setting == "classifier":
        return classifier_main(args)
    from bench import quality_causal

    return quality_causal.main(args)


if __name__ == "__main__":
    main()
