"""Latency of the prompt generator: PyTorch eager vs onnxruntime fp32 vs onnxruntime int8.

Measures text → Z (tokenisation included) on real dev sentences at batch 1 and 32, with
1 and 2 threads, all in one process (ratios from one process are robust to the machine's
noise; absolute numbers are not). Reports the median and p90 latency, file sizes, the
speed-up over eager, and the int8 prediction agreement recorded at export time.

Usage::

    python bench/onnx_latency.py --prompt-dir exports/sst2-lopa            # needs an --int8 export
    python bench/onnx_latency.py --prompt-dir DIR --repeats 50 --out bench/results/onnx_latency.json
    python bench/onnx_latency.py --prompt-dir DIR --browser      # + headless Chromium rows (bench/browser_rows.py)

Writes JSON (command, git commit, versions, date, machine, results) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from export.federated import load_client  # noqa: E402
from export.runtime import FP32_FILE, INT8_FILE, PromptRuntime, read_sidecar  # noqa: E402
from export.sidecar import versions as _versions  # noqa: E402
from lopa_fed.checkpoint import load_model  # noqa: E402
from lopa_fed.tasks import get_task  # noqa: E402

DEFAULT_OUT = REPO / "bench" / "results" / "onnx_latency.json"


def git_commit() -> str:
    """``HEAD`` commit (``+dirty`` when the tree has changes), or ``"none"`` outside git / before the first commit."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        )
        if head.returncode != 0:
            return "none (no commit yet)"
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True, timeout=10
        )
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine() -> dict[str, Any]:
    """CPU model, core count and platform."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "machine": platform.machine(),
    }


def time_fn(fn: Callable[[list], Any], batches: list[list], warmup: int) -> list[float]:
    """Wall time in ms of ``fn(batch)`` for each batch, after ``warmup`` untimed calls."""
    for b in batches[:warmup]:
        fn(b)
    out = []
    for b in batches:
        t0 = time.perf_counter()
        fn(b)
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def torch_size_bytes(model) -> int:
    """fp32 bytes of what eager needs on a device: encoder weights + generator parameters."""
    n = sum(p.numel() * p.element_size() for p in model.prompt.parameters())
    if model.prompt.uses_features:
        n += sum(t.numel() * t.element_size() for t in model.encoder.net.state_dict().values())
    return int(n)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark and return the JSON-serialisable report."""
    meta = read_sidecar(args.prompt_dir)
    if INT8_FILE not in meta["files"]:
        raise SystemExit(f"{args.prompt_dir} has no {INT8_FILE}; export with --int8")
    source = meta.get("source") or {}
    checkpoint = args.checkpoint or source.get("checkpoint")
    if checkpoint:
        pm, _, _ = load_model(checkpoint, source.get("client_state"))
    elif source.get("run") is not None and source.get("partition") is not None:  # `export --run --partition`
        pm = load_client(source["run"], int(source["partition"])).model
    else:
        raise SystemExit("export.json records no checkpoint or federated run; pass --checkpoint")
    task = get_task(args.task or meta.get("task") or "sst2")
    sentences = [task.plain_text(ex) for ex in task.read("dev", limit=max(args.repeats, 32 * args.repeats32))]
    batches = {
        1: [[s] for s in sentences[: args.repeats]],
        32: [sentences[i * 32 : (i + 1) * 32] for i in range(args.repeats32)],
    }
    enc, gen = pm.encoder, pm.prompt

    @torch.inference_mode()
    def eager(texts: list) -> np.ndarray:
        if gen.uses_features:
            t = enc.tokenize(texts)
            e = enc.net(t["input_ids"], t["attention_mask"])
        else:
            e = torch.zeros(len(texts), 0)
        return gen(e).numpy()

    main_int8 = f"ort-int8-{(meta.get('int8') or {}).get('mode', 'full')}"
    int8_dirs = {main_int8: Path(args.prompt_dir)}
    for extra in args.extra_int8:
        emeta = read_sidecar(extra)
        if INT8_FILE not in emeta["files"]:
            raise SystemExit(f"{extra} has no {INT8_FILE}")
        int8_dirs.setdefault(f"ort-int8-{(emeta.get('int8') or {}).get('mode', 'full')}", Path(extra))
    sizes = {"torch-eager": torch_size_bytes(pm), "ort-fp32": meta["files"][FP32_FILE]["bytes"]}
    agreement: dict[str, Any] = {}
    for name, d in int8_dirs.items():
        m = read_sidecar(d)
        sizes[name] = m["files"][INT8_FILE]["bytes"]
        pred = (m.get("parity") or {}).get("predictions") or {}
        agreement[name] = {
            "agreement": (pred.get("int8") or {}).get("agreement"),
            "examples": pred.get("examples"),
            "accuracy": (pred.get("int8") or {}).get("accuracy"),
            "torch_accuracy": (pred.get("torch") or {}).get("accuracy"),
        }
    results = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        engines: dict[str, Callable[[list], Any]] = {
            "torch-eager": eager,
            "ort-fp32": PromptRuntime(args.prompt_dir, threads=threads).prompts,
        }
        for name, d in int8_dirs.items():
            engines[name] = PromptRuntime(d, threads=threads, int8=True).prompts
        for batch, bl in batches.items():
            med: dict[str, float] = {}
            # interleave rounds of engines so drift on a shared machine hits all of them alike
            times: dict[str, list[float]] = {k: [] for k in engines}
            for _ in range(args.rounds):
                for name, fn in engines.items():
                    times[name] += time_fn(fn, bl, args.warmup)
            for name, ts in times.items():
                med[name] = statistics.median(ts)
                results.append(
                    {
                        "engine": name,
                        "threads": threads,
                        "batch": batch,
                        "median_ms": med[name],
                        "p90_ms": float(np.percentile(ts, 90)),
                        "n": len(ts),
                        "size_bytes": sizes[name],
                    }
                )
            for r in results[-len(engines) :]:
                r["speedup_vs_eager"] = med["torch-eager"] / r["median_ms"]
    pred = meta.get("parity", {}).get("predictions", {})
    b1t1 = {
        name: next(r for r in results if r["engine"] == name and r["batch"] == 1 and r["threads"] == 1)
        for name in int8_dirs
    }
    return {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "git_commit": git_commit(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "versions": _versions(),
        "prompt_dir": str(Path(args.prompt_dir).resolve()),
        "method": meta["method"],
        "encoder": (meta.get("encoder") or {}).get("identity"),
        "task": task.name,
        "measure": "text -> Z, tokenisation included, median over real dev sentences",
        "results": results,
        "int8_agreement": agreement,
        "fp32_agreement": (pred.get("fp32") or {}).get("agreement"),
        "fp32_agreement_examples": pred.get("examples"),
        "target": {
            name: {
                "int8_b1_t1_speedup": r["speedup_vs_eager"],
                "speedup_ok": r["speedup_vs_eager"] >= 3.0,
                "agreement": agreement[name]["agreement"],
                "agreement_ok": agreement[name]["agreement"] is not None
                and agreement[name]["agreement"] >= 0.99,
            }
            for name, r in b1t1.items()
        },
    }


def markdown(report: dict[str, Any]) -> str:
    """The results as a markdown table (README-ready)."""
    lines = [
        "| engine | threads | batch | median ms | p90 ms | × eager | file MB |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in sorted(report["results"], key=lambda r: (r["batch"], r["threads"])):
        lines.append(
            f"| {r['engine']} | {r['threads']} | {r['batch']} | {r['median_ms']:.2f} | {r['p90_ms']:.2f} | "
            f"{r['speedup_vs_eager']:.2f} | {r['size_bytes'] / 1e6:.1f} |"
        )
    lines.append("")
    for name, t in report["target"].items():
        a = report["int8_agreement"][name]
        agree = (
            f"{t['agreement']:.2%} on {a['examples']} {report['task']} dev examples"
            if t["agreement"] is not None
            else "n/a"
        )
        lines.append(
            f"- {name}, batch 1, 1 thread: {t['int8_b1_t1_speedup']:.2f}× eager "
            f"(target ≥ 3×: {'met' if t['speedup_ok'] else 'not met'}); prediction agreement with PyTorch {agree} "
            f"(target ≥ 99 %: {'met' if t['agreement_ok'] else 'not met'})."
        )
    if report.get("browser"):
        lines += ["", "| browser engine | wasm threads | isolated | median ms | p90 ms | time to first Z ms | bundle MB |",
                  "| --- | ---: | --- | ---: | ---: | ---: | ---: |"]
        for b in report["browser"]:
            lines.append(
                f"| {b['engine']} | {b['threads']} | {'yes' if b['cross_origin_isolated'] else 'no'} | {b['median_ms']:.2f} | "
                f"{b['p90_ms']:.2f} | {b['first_z_ms']:.0f} | {b['bundle_bytes'] / 1e6:.1f} |"
            )
        lines.append("")
        for c in report.get("browser_vs_python", []):
            lines.append(
                f"- {c['browser']} ({c['threads']} thread(s)): {c['ratio']:.2f}× {c['python']} "
                f"({c['browser_ms']:.2f} vs {c['python_ms']:.2f} ms; target ≤ {c['target']}×: "
                f"{'met' if c['within_target'] else 'not met'})."
            )
    if report.get("browser_agreement"):
        a = report["browser_agreement"]
        lines.append(
            f"- browser int8 ({a['mode']}) Z on all {a['examples']} dev examples → frozen-model predictions: "
            f"agreement with fp32 {a['agreement_vs_fp32']:.2%} (Python onnxruntime int8: {a['python_ort_agreement_vs_fp32']:.2%}; "
            f"browser vs Python int8 {a['agreement_vs_python_ort']:.2%}; max |ΔZ| browser vs Python int8 "
            f"{a['max_abs_z_diff_vs_python_ort_first64']:.3g} on the first 64)."
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--prompt-dir", required=True, help="export directory (with --int8)")
    p.add_argument(
        "--checkpoint", default=None, help="checkpoint for the eager model (default: the one in export.json)"
    )
    p.add_argument(
        "--extra-int8",
        action="append",
        default=[],
        metavar="DIR",
        help="another export of the same checkpoint whose int8 file is benchmarked too (e.g. --int8-mode full)",
    )
    p.add_argument("--task", default=None, help="task whose dev sentences are used (default: the export's)")
    p.add_argument(
        "--repeats", type=int, default=100, help="batch-1 calls per engine per round (distinct sentences)"
    )
    p.add_argument("--repeats32", type=int, default=8, help="batch-32 calls per engine per round")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--out", default=str(DEFAULT_OUT), help="JSON output path")
    p.add_argument("--browser", action="store_true",
                   help="add headless-Chromium rows (onnxruntime-web wasm, 1 and 2 threads, load time, bundle size)")
    p.add_argument("--browser-sentences", type=int, default=50, help="dev sentences timed in the browser per round")
    p.add_argument("--browser-repeats", type=int, default=3, help="browser rounds over those sentences")
    p.add_argument("--browser-agreement", action="store_true",
                   help="int8 Z of the whole dev set computed in the browser → frozen-model prediction agreement with fp32")
    args = p.parse_args(argv)
    from bench.common import load_average

    load_start = load_average()
    report = run(args)
    report["load_average"] = {"start": load_start, "after_python": load_average()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report["table"] = markdown(report)
    out.write_text(json.dumps(report, indent=2))  # the Python rows are kept even if the browser part fails
    if args.browser:
        from bench.browser_rows import browser_rows, compare_rows

        task = get_task(args.task or report["task"])
        sentences = [task.plain_text(ex) for ex in task.read("dev", limit=args.browser_sentences)]
        report["browser"] = browser_rows(args.prompt_dir, sentences, repeats=args.browser_repeats)
        report["browser_vs_python"] = compare_rows(report["browser"], report["results"])
        report["table"] = markdown(report)
        out.write_text(json.dumps(report, indent=2))
    if args.browser_agreement:
        from bench.browser_rows import browser_agreement

        meta = read_sidecar(args.prompt_dir)
        pm, task, cfg = load_model(args.checkpoint or meta["source"]["checkpoint"], meta["source"].get("client_state"))
        data = task.encode(task.read("dev"), pm.frozen, int(meta.get("frozen_max_length") or 256))
        report["browser_agreement"] = browser_agreement(pm, data, args.prompt_dir, int8=True)
    report["load_average"]["end"] = load_average()
    report["table"] = markdown(report)
    out.write_text(json.dumps(report, indent=2))
    print(report["table"])
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
