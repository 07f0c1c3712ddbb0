"""Training speed: examples/s of one optimiser step on the same frozen model, m and batch size.

Two settings (``--setting``):

* ``classifier`` (default): frozen MiniLM with a 2-class head on the pooled text states;
* ``causal``: the paper's setting on a decoder, frozen SmolLM2-135M-Instruct read through the
  next-token verbalizer (our causal path computes the LM head at the last position only), MiniLM
  as LoPA's instance encoder. PEFT's ``PromptTuningConfig`` (``CAUSAL_LM``) runs on a copy of the
  same ``LlamaForCausalLM`` with the same right-padded batches; its forward computes logits at
  every position over the 49k vocabulary, and the loss reads them at the last real token
  (label words only, cross-entropy), as ours does. Zs starts from vocabulary rows for ours and
  PEFT's RANDOM init for PEFT (the init does not change the cost).

All methods run in one process on the same fixed batches of real SST-2 text, round-robin
(each repeat times every method once, so contention from other jobs hits them alike):

* ``lopa-cold``  – LoPA with the instance-encoder feature cache cleared before the repeat
                   (every batch pays a MiniLM encoder forward);
* ``lopa-warm``  – LoPA with the cache already filled (the steady state from epoch 2 on);
* ``pt``         – our prompt tuning (``Z = Zs``);
* ``peft-pt``    – PEFT's ``PromptTuningConfig`` on a copy of the same BertModel
                   (feature extraction), the same masked-mean pooling over text positions,
                   the same 2-class head and loss;
* ``lora``       – our LoRA baseline (peft, r=16, q/k/v).

A step is ``forward → zero_grad → backward → clip_grad_norm → AdamW.step``, as in
``lopa_fed.train.fit``. Reported: median examples/s over repeats and the median of the
per-repeat ratios (PITFALLS.md, "Timing noise"). A torch.profiler table of one LoPA-warm
and one PT step is stored too, to show what limits LoPA when a target is missed.

    .venv/bin/python bench/throughput.py                # full: 7 repeats x 8 steps
    .venv/bin/python bench/throughput.py --repeats 1 --steps 1   # smoke
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common  # noqa: E402

METHODS = ("lopa-cold", "lopa-warm", "pt", "peft-pt", "lora")
TARGET_PT = 1.10  # LoPA warm step time <= 1.10 x PT step time
TARGET_PEFT = 1.0  # LoPA warm speed >= 1.0 x PEFT PT speed (classifier)
TARGET_PEFT_CAUSAL = 1.3  # causal: PEFT computes the LM head at every position, ours at one (issue 10)


class PeftPT:
    """PEFT prompt tuning on a private copy of the frozen BertModel, with our pooling, head and loss."""

    def __init__(self, frozen, m: int, num_labels: int = 2) -> None:
        import torch
        from peft import PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model

        base = copy.deepcopy(frozen.model)
        cfg = PromptTuningConfig(task_type=TaskType.FEATURE_EXTRACTION, num_virtual_tokens=m,
                                 prompt_tuning_init=PromptTuningInit.RANDOM, token_dim=frozen.d)
        self.model = get_peft_model(base, cfg)
        self.m = m
        torch.manual_seed(0)
        self.head = torch.nn.Linear(frozen.d, num_labels)
        torch.nn.init.normal_(self.head.weight, std=0.02)
        torch.nn.init.zeros_(self.head.bias)

    def parameters(self):
        return [p for p in self.model.parameters() if p.requires_grad] + list(self.head.parameters())

    def train(self):
        self.model.train()
        self.model.base_model.eval()  # the frozen BERT stays in eval mode, as ours does
        self.head.train()

    def loss(self, batch):
        import torch

        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        states = out.last_hidden_state[:, self.m:]
        w = batch["attention_mask"].to(states.dtype).unsqueeze(-1)
        pooled = (states * w).sum(1) / w.sum(1).clamp(min=1.0)
        return torch.nn.functional.cross_entropy(self.head(pooled), batch["labels"])


class PeftCausalPT:
    """PEFT prompt tuning (CAUSAL_LM) on a private copy of the frozen causal LM, with our verbalizer loss."""

    def __init__(self, frozen, m: int, label_ids: list[int]) -> None:
        import torch
        from peft import PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model

        base = copy.deepcopy(frozen.model)
        cfg = PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=m,
                                 prompt_tuning_init=PromptTuningInit.RANDOM, token_dim=frozen.d)
        torch.manual_seed(0)
        self.model = get_peft_model(base, cfg)
        self.m = m
        self.label_ids = list(label_ids)

    def parameters(self):
        return [p for p in self.model.parameters() if p.requires_grad]

    def train(self):
        self.model.train()
        self.model.base_model.eval()

    def loss(self, batch):
        import torch

        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        last = self.m + batch["attention_mask"].sum(1) - 1  # last real token, after the m virtual tokens
        logits = out.logits[torch.arange(last.shape[0]), last][:, self.label_ids]
        return torch.nn.functional.cross_entropy(logits, batch["labels"])


class Ours:
    def __init__(self, model) -> None:
        self.model = model

    def parameters(self):
        return self.model.trainable_parameters()

    def train(self):
        self.model.train()

    def loss(self, batch):
        return self.model(batch).loss


def _step(runner, opt, params, batch) -> None:
    import torch

    loss = runner.loss(batch)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()


def _profile(runner, opt, params, batch, label: str, rows: int = 12) -> dict:
    """Top ops by self CPU time for one step, plus a short text table."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        _step(runner, opt, params, batch)
    ka = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in ka)
    top = sorted(ka, key=lambda e: e.self_cpu_time_total, reverse=True)[:rows]
    return {
        "label": label,
        "total_self_cpu_ms": total / 1e3,
        "top": [{"op": e.key, "self_cpu_ms": e.self_cpu_time_total / 1e3, "calls": e.count} for e in top],
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--steps", type=int, default=8, help="timed optimiser steps per method per repeat")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--m", type=int, default=10)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--task", default="sst2")
    ap.add_argument("--out-dir", default=str(common.RESULTS))
    ap.add_argument("--setting", choices=("classifier", "causal"), default="classifier",
                    help="classifier: MiniLM + head; causal: SmolLM2-135M next-token verbalizer (the paper's setting)")
    ap.add_argument("--name", default=None, help="result name (default throughput, or throughput-causal)")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    ap.add_argument("--no-plot", action="store_true")
    args = ap.parse_args(argv)

    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)

    from lopa_fed import LoPAConfig, build_model, get_task, load_splits
    from lopa_fed.train import set_seed

    load0 = common.start_load()
    meta = common.metadata(seeds=[0])
    task = get_task(args.task)
    set_seed(0)
    target_peft = TARGET_PEFT_CAUSAL if args.setting == "causal" else TARGET_PEFT
    name = args.name or ("throughput" if args.setting == "classifier" else "throughput-causal")
    if args.setting == "causal":
        mk = dict(model="smollm2", kind="causal")
        init = dict(zs_init="vocab")
    else:
        mk, init = {}, {}
    models = {
        "lopa": build_model(task, LoPAConfig(method="lopa", m=args.m, r=4, **init), seed=0, **mk),
        "pt": build_model(task, LoPAConfig(method="pt", m=args.m, **init), seed=0, **mk),
        "lora": build_model(task, LoPAConfig(method="lora", lora_r=16), seed=0, **mk),
    }
    frozen = models["pt"].frozen
    n_items = args.batch_size * args.steps
    splits = load_splits(task, frozen, max_length=args.max_length, train_limit=max(n_items, 64), test_limit=8)
    data = splits.train
    batches = [data.collate([data[i] for i in range(s, s + args.batch_size)]) for s in range(0, n_items, args.batch_size)]
    tokens = [int(b["attention_mask"].sum()) for b in batches]
    runners = {
        "lopa-cold": Ours(models["lopa"]), "lopa-warm": Ours(models["lopa"]), "pt": Ours(models["pt"]),
        "peft-pt": (PeftCausalPT(frozen, args.m, models["pt"].label_ids) if args.setting == "causal"
                    else PeftPT(frozen, args.m)),
        "lora": Ours(models["lora"]),
    }
    opts = {}
    for k, r in runners.items():
        ps = r.parameters()
        opts[k] = (torch.optim.AdamW(ps, lr=1e-4), ps)
    enc = models["lopa"].encoder
    trainable = {k: sum(p.numel() for p in opts[k][1]) for k in METHODS}

    # Warm-up: one untimed step each (allocator, first-call overheads); fills the feature cache.
    for k in METHODS:
        runners[k].train()
        _step(runners[k], *opts[k], batches[0])
    times: dict[str, list[float]] = {k: [] for k in METHODS}
    cpu_times: dict[str, list[float]] = {k: [] for k in METHODS}
    cache_stats = []
    with common.progress() as bar:
        t = bar.add_task("throughput", total=args.repeats * len(METHODS))
        for rep in range(args.repeats):
            order = list(METHODS) if rep % 2 == 0 else [*METHODS[:2], *reversed(METHODS[2:])]
            for k in order:
                runner, (opt, ps) = runners[k], opts[k]
                runner.train()
                if k == "lopa-cold":
                    enc.clear_cache()
                elif k == "lopa-warm":
                    enc.encode([it.enc_text for it in data.items[:n_items]])  # fill
                before = enc.cache_info()
                t0, c0 = time.perf_counter(), time.process_time()
                for b in batches:
                    _step(runner, opt, ps, b)
                times[k].append(time.perf_counter() - t0)
                cpu_times[k].append(time.process_time() - c0)
                after = enc.cache_info()
                if k.startswith("lopa"):
                    cache_stats.append({"method": k, "repeat": rep,
                                        "hits": after["hits"] - before["hits"],
                                        "misses": after["misses"] - before["misses"]})
                bar.advance(t)

    eps = {k: [n_items / s for s in v] for k, v in times.items()}
    step_ms = {k: [1e3 * s / len(batches) for s in v] for k, v in times.items()}
    ratio_pt = [a / b for a, b in zip(step_ms["lopa-warm"], step_ms["pt"])]          # step-time ratio
    ratio_peft = [a / b for a, b in zip(eps["lopa-warm"], eps["peft-pt"])]           # speed ratio
    ratio_cold = [a / b for a, b in zip(step_ms["lopa-cold"], step_ms["pt"])]
    # CPU time of this process (all its threads): far less sensitive to other jobs than wall time.
    cpu_ms = {k: [1e3 * s / len(batches) for s in v] for k, v in cpu_times.items()}
    cpu_ratio_pt = [a / b for a, b in zip(cpu_ms["lopa-warm"], cpu_ms["pt"])]
    cpu_ratio_peft = [b / a for a, b in zip(cpu_ms["lopa-warm"], cpu_ms["peft-pt"])]
    cpu_ratio_cold = [a / b for a, b in zip(cpu_ms["lopa-cold"], cpu_ms["pt"])]
    summary = {
        k: {"median_examples_per_s": common.median(eps[k]), "min_examples_per_s": min(eps[k]),
            "max_examples_per_s": max(eps[k]), "median_step_ms": common.median(step_ms[k]),
            "median_cpu_ms_per_step": common.median(cpu_ms[k]),
            "cpu_examples_per_s": n_items / common.median(cpu_times[k]),
            "trainable_params": trainable[k]}
        for k in METHODS
    }
    ratios = {
        "lopa_warm_over_pt_step_time": common.median(ratio_pt),
        "lopa_cold_over_pt_step_time": common.median(ratio_cold),
        "lopa_warm_over_peft_pt_speed": common.median(ratio_peft),
        "cpu_lopa_warm_over_pt_step": common.median(cpu_ratio_pt),
        "cpu_lopa_cold_over_pt_step": common.median(cpu_ratio_cold),
        "cpu_lopa_warm_over_peft_pt_speed": common.median(cpu_ratio_peft),
        "per_repeat": {"warm_pt_step": ratio_pt, "warm_peft_speed": ratio_peft, "cold_pt_step": ratio_cold,
                       "cpu_warm_pt_step": cpu_ratio_pt, "cpu_warm_peft_speed": cpu_ratio_peft},
    }
    targets = {
        "lopa_warm_step_le_1.10x_pt": ratios["lopa_warm_over_pt_step_time"] <= TARGET_PT,
        f"lopa_warm_speed_ge_{target_peft}x_peft_pt": ratios["lopa_warm_over_peft_pt_speed"] >= target_peft,
        "cpu_lopa_warm_step_le_1.10x_pt": ratios["cpu_lopa_warm_over_pt_step"] <= TARGET_PT,
        f"cpu_lopa_warm_speed_ge_{target_peft}x_peft_pt": ratios["cpu_lopa_warm_over_peft_pt_speed"] >= target_peft,
    }
    # Profile one step of LoPA warm and PT (always; it explains the ratio either way).
    enc.encode([it.enc_text for it in data.items[:n_items]])
    profiles = [_profile(runners[k], *opts[k], batches[0], k) for k in ("lopa-warm", "pt", "peft-pt")]
    load1 = common.load_average()
    meta["machine"]["load_average_end"] = load1
    note = common.contention_note(load0, load1)
    result = {
        "meta": meta,
        "setup": {"setting": args.setting, "task": args.task, "model": frozen.identity, "kind": frozen.kind, "encoder": enc.identity, "m": args.m, "r": 4,
                  "batch_size": args.batch_size, "steps_per_repeat": len(batches), "repeats": args.repeats,
                  "max_length": args.max_length, "mean_tokens_per_batch": sum(tokens) / len(tokens),
                  "torch_threads": torch.get_num_threads(), "contention": note},
        "summary": summary, "ratios": ratios, "targets": targets, "cache": cache_stats,
        "profiles": profiles, "raw_seconds": times, "raw_cpu_seconds": cpu_times,
    }
    out = Path(args.out_dir)
    common.write_json(name, result, out)
    rows = [(k, f"{s['median_examples_per_s']:.1f}", f"{s['min_examples_per_s']:.1f}–{s['max_examples_per_s']:.1f}",
             f"{s['median_step_ms']:.0f}", f"{s['median_cpu_ms_per_step']:.0f}", f"{s['trainable_params']:,}")
            for k, s in summary.items()]
    print(common.markdown_table(["method", "examples/s (median, wall)", "range", "step ms (wall)",
                                 "CPU ms / step", "trainable"], rows))
    print()
    print(f"LoPA-warm / PT step time: {ratios['lopa_warm_over_pt_step_time']:.3f} (target <= {TARGET_PT}) -> "
          f"{'met' if targets['lopa_warm_step_le_1.10x_pt'] else 'MISSED'}")
    print(f"LoPA-warm / PEFT-PT speed: {ratios['lopa_warm_over_peft_pt_speed']:.3f} (target >= {target_peft}) -> "
          f"{'met' if targets[f'lopa_warm_speed_ge_{target_peft}x_peft_pt'] else 'MISSED'}")
    print(f"LoPA-cold / PT step time: {ratios['lopa_cold_over_pt_step_time']:.3f}")
    print(f"CPU time: LoPA-warm / PT step {ratios['cpu_lopa_warm_over_pt_step']:.3f}, LoPA-warm / PEFT-PT speed "
          f"{ratios['cpu_lopa_warm_over_peft_pt_speed']:.3f}, LoPA-cold / PT step {ratios['cpu_lopa_cold_over_pt_step']:.3f}")
    if note:
        print("note:", note)
    for p in profiles:
        print(f"\nprofile {p['label']} ({p['total_self_cpu_ms']:.0f} ms self CPU):")
        for e in p["top"][:6]:
            print(f"  {e['op']:<40} {e['self_cpu_ms']:8.1f} ms  x{e['calls']}")
    if not args.no_plot:
        plt = common.plt()
        fig, ax = plt.subplots(figsize=(7, 4))
        ks = list(METHODS)
        ax.boxplot([eps[k] for k in ks])
        ax.set_xticks(range(1, len(ks) + 1), ks)
        ax.set_ylabel("training examples / s")
        ax.set_title(f"{'MiniLM' if args.setting == 'classifier' else 'SmolLM2-135M causal verbalizer'}, m={args.m}, batch {args.batch_size}, {args.repeats} repeats" + (" (shared CPU)" if note else ""))
        common.save_fig(fig, name, out)
    return result


if __name__ == "__main__":
    main()
