"""int8 variants of one trained prompt generator: prediction agreement with fp32 and batch-1 speed.

For a trained checkpoint (e.g. ``lopa-fed train --task sst2 ...``) this exports the fp32 graph once,
then writes one int8 copy per variant (dynamic ``balanced``/``full``; static QDQ calibrated on real
train text with different parts kept in fp32 and different calibrations) and measures, per variant:

* prediction agreement with the fp32 path (PyTorch Z; the ONNX fp32 Z agrees with it 100 %) on the
  full dev set, through the frozen model;
* batch-1, 1-thread latency of text → Z (tokenisation included) against eager PyTorch, interleaved
  rounds in one process, median over real dev sentences.

Resumable: a variant already in the output file is skipped; the file is rewritten after each variant.

Usage::

    flock /work/heavy.lock nice -n 10 .venv/bin/python bench/int8_static.py --checkpoint runs/sst2-lopa \\
        --work /tmp/int8-work --out bench/results/int8_static.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import RESULTS, contention_note, load_average, metadata, write_json  # noqa: E402
from export.host import predict_logits  # noqa: E402
from export.pipeline import calibration_feeds, export_checkpoint  # noqa: E402
from export.quantize import quantize_int8  # noqa: E402
from export.quantize_static import quantize_static_int8  # noqa: E402
from export.runtime import FP32_FILE, INT8_FILE, PromptRuntime, read_sidecar  # noqa: E402
from export.sidecar import file_entry, write_sidecar  # noqa: E402
from lopa_fed.checkpoint import load_model  # noqa: E402

#: name → how to make it: ("dynamic", mode) or ("static", options of quantize_static_int8).
VARIANTS: dict[str, tuple[str, Any]] = {
    "dynamic-balanced": ("dynamic", "balanced"),
    "dynamic-full": ("dynamic", "full"),
    "dynamic-ffn": ("dynamic", "ffn"),
    "dynamic-ffn-l1": ("dynamic", "ffn-l1"),
    "static-all": ("static", {"first_layers": 0, "ffn_out": False}),
    "static-ffnout-fp32": ("static", {"first_layers": 0, "ffn_out": True}),
    "static-ffnout-l0-fp32": ("static", {"first_layers": 1, "ffn_out": True}),
    "static-all-percentile": ("static", {"first_layers": 0, "ffn_out": False, "calibrate": "percentile"}),
    "static-ffnout-percentile": ("static", {"first_layers": 0, "ffn_out": True, "calibrate": "percentile"}),
    "static-all-qint8": ("static", {"first_layers": 0, "ffn_out": False, "activation": "QInt8"}),
}


def make_variant(base: Path, work: Path, name: str, pm, calibration_n: int) -> Path:
    """A copy of the fp32 export ``base`` holding ``name``'s int8 file; returns its directory.

    A directory already holding this variant's int8 file (made by an earlier, interrupted run) is reused.
    """
    out = work / name
    if (out / INT8_FILE).is_file() and (out / "export.json").is_file():
        info = read_sidecar(out).get("int8") or {}
        if info.get("variant") == name and info.get("fp32_sha256") == read_sidecar(base)["files"][FP32_FILE]["sha256"]:
            return out
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for f in base.iterdir():
        if f.is_file():
            shutil.copyfile(f, out / f.name)
    meta = read_sidecar(out)
    kind, opt = VARIANTS[name]
    t0 = time.perf_counter()
    if kind == "dynamic":
        info = quantize_int8(out / FP32_FILE, out / INT8_FILE, opt)
    else:
        feeds = calibration_feeds(pm, PromptRuntime(out), meta, calibration_n)
        info = quantize_static_int8(out / FP32_FILE, out / INT8_FILE, feeds, **opt)
    info["seconds"] = time.perf_counter() - t0
    info["variant"], info["fp32_sha256"] = name, meta["files"][FP32_FILE]["sha256"]
    meta["int8"] = info
    meta["files"][INT8_FILE] = file_entry(out / INT8_FILE)
    write_sidecar(out, meta)
    return out


def agreement(pm, data, ref_logits: np.ndarray, rt: PromptRuntime) -> dict[str, Any]:
    """Predictions of the frozen model fed this runtime's Z against the fp32 (PyTorch Z) predictions."""
    logits = predict_logits(pm, data, rt.prompts, 32)
    ref, got = ref_logits.argmax(-1), logits.argmax(-1)
    labels = np.asarray(data.labels)
    return {
        "agreement": float((ref == got).mean()), "disagreements": int((ref != got).sum()),
        "examples": len(data), "accuracy": float((got == labels).mean()),
        "fp32_accuracy": float((ref == labels).mean()),
    }


def latency(pm, dirs: dict[str, Path], sentences: list[str], rounds: int) -> dict[str, float]:
    """Median ms of batch-1 text → Z on 1 thread for eager PyTorch and each int8 file (interleaved rounds)."""
    torch.set_num_threads(1)
    enc, gen = pm.encoder, pm.prompt

    @torch.inference_mode()
    def eager(texts: list) -> np.ndarray:
        t = enc.tokenize(texts)
        return gen(enc.net(t["input_ids"], t["attention_mask"])).numpy()

    engines = {"torch-eager": eager, **{n: PromptRuntime(d, threads=1, int8=True).prompts for n, d in dirs.items()}}
    times: dict[str, list[float]] = {k: [] for k in engines}
    for _ in range(rounds):
        for name, fn in engines.items():
            for s in sentences[:5]:
                fn([s])
            for s in sentences:
                t0 = time.perf_counter()
                fn([s])
                times[name].append((time.perf_counter() - t0) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, help="trained checkpoint (lopa-fed train --out, or its checkpoint/)")
    p.add_argument("--work", required=True, help="scratch directory for the exports")
    p.add_argument("--out", default=str(RESULTS / "int8_static.json"))
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of the variants")
    p.add_argument("--calibration", type=int, default=256, help="real train examples for static calibration")
    p.add_argument("--sentences", type=int, default=100, help="dev sentences timed per round (batch 1)")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    out, work = Path(args.out), Path(args.work)
    report = json.loads(out.read_text()) if out.is_file() else {"variants": {}}
    report.update(metadata(load_start=load_average()))
    pm, task, cfg = load_model(args.checkpoint)
    base = work / "fp32"
    if not (base / "export.json").is_file():
        export_checkpoint(args.checkpoint, base, parity_examples=64, agreement_examples=None, force=True)
    report["fp32_parity"] = read_sidecar(base)["parity"]
    max_length = int((cfg.get("train") or {}).get("max_length") or task.defaults.max_length)
    data = task.encode(task.read("dev"), pm.frozen, max_length)
    ref_logits = predict_logits(pm, data, None, 32)
    sentences = [it.enc_text for it in data.items[: args.sentences]]
    for name in args.variants.split(","):
        if name in report["variants"]:
            continue
        d = make_variant(base, work, name, pm, args.calibration)
        meta = read_sidecar(d)
        row = {"int8": {k: v for k, v in meta["int8"].items() if k != "fp32_nodes"},
               "fp32_nodes": len(meta["int8"]["fp32_nodes"]), "bytes": meta["files"][INT8_FILE]["bytes"],
               **agreement(pm, data, ref_logits, PromptRuntime(d, int8=True))}
        pred = meta.setdefault("parity", {}).setdefault("predictions", {})  # for bench/onnx_latency.py's table
        pred["int8"] = {"agreement": row["agreement"], "accuracy": row["accuracy"], "disagreements": row["disagreements"]}
        write_sidecar(d, meta)
        ms = latency(pm, {name: d}, sentences, args.rounds)
        row.update({"b1_t1_ms": ms[name], "eager_b1_t1_ms": ms["torch-eager"],
                    "speedup_vs_eager": ms["torch-eager"] / ms[name], "load_average": load_average()})
        row["meets_target"] = row["agreement"] >= 0.99 and row["speedup_vs_eager"] >= 3.0
        report["variants"][name] = row
        report["load_end"] = load_average()
        report["contention"] = contention_note(report["machine"]["load_average"], report["load_end"])
        write_json(out.stem, report, out.parent)
        print(f"{name}: agreement {row['agreement']:.2%} ({row['disagreements']} of {row['examples']}), "
              f"{row['speedup_vs_eager']:.2f}x eager ({row['b1_t1_ms']:.2f} ms vs {row['eager_b1_t1_ms']:.2f} ms), "
              f"{row['bytes'] / 1e6:.1f} MB", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
