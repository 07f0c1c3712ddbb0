"""Why fp32 onnxruntime is slower than eager PyTorch at batch 32: per-operator profile and session options.

Times batch-32 text → Z (the same real dev sentences, tokenisation included, 1 thread) for eager
PyTorch and for the fp32 graph under each onnxruntime optimisation level, then runs onnxruntime's
profiler (``SessionOptions.enable_profiling``) at each level and sums node time per operator type,
and torch's profiler for eager. The operator table shows where the time goes.

Usage::

    flock /work/heavy.lock nice -n 10 .venv/bin/python bench/ort_profile.py --prompt-dir EXPORT \\
        --out bench/results/ort_profile.json
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import RESULTS, load_average, metadata, write_json  # noqa: E402
from export.runtime import PromptRuntime, read_sidecar  # noqa: E402
from lopa_fed.checkpoint import load_model  # noqa: E402
from lopa_fed.tasks import get_task  # noqa: E402

LEVELS = ("basic", "extended", "all")


def bert_fused(prompt_dir: str, tmp: Path) -> tuple[PromptRuntime, dict[str, int]]:
    """A copy of the export whose fp32 graph went through onnxruntime's transformer optimizer (model_type bert)."""
    import shutil

    from onnxruntime.transformers.optimizer import optimize_model

    for f in Path(prompt_dir).iterdir():
        if f.is_file():
            shutil.copyfile(f, tmp / f.name)
    opt = optimize_model(str(tmp / "prompt_generator.onnx"), model_type="bert", num_heads=0, hidden_size=0)
    opt.save_model_to_file(str(tmp / "prompt_generator.onnx"))
    ops = collections.Counter(n.op_type for n in opt.model.graph.node)
    return PromptRuntime(tmp, threads=1, verify_hash=False, optimization="all"), dict(ops.most_common(12))


def op_profile(rt: PromptRuntime, feeds: list[dict[str, np.ndarray]], level: str) -> dict[str, float]:
    """ms per operator type summed over ``feeds`` (onnxruntime profiler, 1 thread, ``level``)."""
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = 1, 1
    so.graph_optimization_level = {
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    with tempfile.TemporaryDirectory() as tmp:
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tmp) / "ort")
        sess = ort.InferenceSession(str(rt.model_path), so, providers=["CPUExecutionProvider"])
        sess.run(None, feeds[0])
        for f in feeds:
            sess.run(None, f)
        events = json.loads(Path(sess.end_profiling()).read_text())
    by_op: dict[str, float] = collections.defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            by_op[e["args"].get("op_name", "?")] += e["dur"] / 1e3 / len(feeds)  # per batch (feeds[0] is warmup)
    return dict(sorted(by_op.items(), key=lambda kv: -kv[1]))


def torch_profile(pm, batches: list[list]) -> dict[str, float]:
    """ms per aten operator (self CPU time) per batch of eager PyTorch."""
    from torch.profiler import ProfilerActivity, profile

    enc, gen = pm.encoder, pm.prompt
    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
        for b in batches:
            t = enc.tokenize(b)
            gen(enc.net(t["input_ids"], t["attention_mask"]))
    rows = {e.key: e.self_cpu_time_total / 1e3 / len(batches) for e in prof.key_averages()}
    return dict(sorted(((k, v) for k, v in rows.items() if v > 0.05), key=lambda kv: -kv[1])[:25])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--prompt-dir", required=True, help="export directory whose checkpoint is recorded in export.json")
    p.add_argument("--batches", type=int, default=6, help="batches of 32 real dev sentences per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default=str(RESULTS / "ort_profile.json"))
    p.add_argument("--bert-fusion", action="store_true",
                   help="also time the graph after onnxruntime.transformers.optimizer (model_type bert)")
    args = p.parse_args(argv)
    tmpdir = tempfile.TemporaryDirectory(prefix="lopa-fused-")
    torch.set_num_threads(1)
    meta = read_sidecar(args.prompt_dir)
    pm, _, _ = load_model(meta["source"]["checkpoint"], meta["source"].get("client_state"))
    task = get_task(meta.get("task") or "sst2")
    sents = [task.plain_text(ex) for ex in task.read("dev", limit=32 * args.batches)]
    batches = [sents[i * 32 : (i + 1) * 32] for i in range(args.batches)]
    enc, gen = pm.encoder, pm.prompt

    @torch.inference_mode()
    def eager(texts: list) -> np.ndarray:
        t = enc.tokenize(texts)
        return gen(enc.net(t["input_ids"], t["attention_mask"])).numpy()

    engines: dict[str, Any] = {"torch-eager": eager}
    runtimes = {lv: PromptRuntime(args.prompt_dir, threads=1, optimization=lv) for lv in LEVELS}
    engines.update({f"ort-fp32-{lv}": rt.prompts for lv, rt in runtimes.items()})
    fused_ops: dict[str, int] = {}
    if args.bert_fusion:
        fused, fused_ops = bert_fused(args.prompt_dir, Path(tmpdir.name))
        engines["ort-fp32-bert-fused"] = fused.prompts
    times: dict[str, list[float]] = {k: [] for k in engines}
    for _ in range(args.rounds):
        for name, fn in engines.items():
            fn(batches[0])
            for b in batches:
                t0 = time.perf_counter()
                fn(b)
                times[name].append((time.perf_counter() - t0) * 1e3)
    med = {k: statistics.median(v) for k, v in times.items()}
    ref = eager(batches[0])
    diffs = {lv: float(np.abs(rt.prompts(batches[0]) - ref).max()) for lv, rt in runtimes.items()}
    if args.bert_fusion:
        diffs["bert-fused"] = float(np.abs(engines["ort-fp32-bert-fused"](batches[0]) - ref).max())
    feeds = [runtimes["basic"].encode(b) for b in batches]
    tok_times = []
    for b in batches:
        t0 = time.perf_counter()
        runtimes["basic"].encode(b)
        tok_times.append((time.perf_counter() - t0) * 1e3)
    tok_ms = statistics.median(tok_times)
    report = {
        **metadata(), "prompt_dir": str(Path(args.prompt_dir).resolve()), "batch": 32, "threads": 1,
        "median_ms": med, "vs_eager": {k: med["torch-eager"] / v for k, v in med.items()},
        "max_abs_z_diff_vs_eager": diffs, "tokenize_ms": tok_ms,
        "ort_ops_ms_per_batch": {lv: op_profile(runtimes[lv], feeds, lv) for lv in LEVELS},
        "torch_ops_ms_per_batch": torch_profile(pm, batches),
        "seq_lengths": [int(f["input_ids"].shape[1]) for f in feeds], "load_end": load_average(),
        "bert_fused_ops": fused_ops,
    }
    out = Path(args.out)
    write_json(out.stem, report, out.parent)
    for k, v in med.items():
        print(f"{k:20s} {v:8.2f} ms  ({report['vs_eager'][k]:.2f}x eager)")
    for lv in LEVELS:
        top = list(report["ort_ops_ms_per_batch"][lv].items())[:8]
        print(lv, ", ".join(f"{op} {ms:.1f}" for op, ms in top))
    print("torch", ", ".join(f"{op} {ms:.1f}" for op, ms in list(report["torch_ops_ms_per_batch"].items())[:8]))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
