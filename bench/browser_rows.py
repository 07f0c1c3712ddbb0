"""Browser rows of ``bench/onnx_latency.py``: text → Z in headless Chromium (onnxruntime-web, wasm).

For each precision the export holds (fp32, int8) a web bundle is written (``export.web_bundle``),
served from 127.0.0.1, and timed in a fresh page:

* ``load``: bundle bytes and time to first Z (module import + tokenizer + wasm/session + one Z);
* ``latency``: batch-1 text → Z (tokenisation included), median and p90 over real dev sentences,
  on 1 wasm thread (plain server) and on ``threads`` threads (COOP/COEP headers: cross-origin
  isolated, which onnxruntime-web needs for more than one thread).
"""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from export.host import predict_logits
from export.runtime import INT8_FILE, PromptRuntime, read_sidecar
from export.web_browser import browser_missing, decode_items, run_in_browser, serve_static
from export.web_bundle import write_web_bundle

__all__ = ["browser_agreement", "browser_rows", "compare_rows"]


def browser_rows(
    prompt_dir: str | Path, sentences: Sequence[Any], *, repeats: int = 3, threads: Sequence[int] = (1, 2)
) -> list[dict[str, Any]]:
    """One row per (precision, threads): latency and load figures measured in headless Chromium.

    Parameters
    ----------
    prompt_dir : path
        An export directory (with ``--int8`` for the int8 rows).
    sentences : sequence of str or (str, str | None)
        Real dev inputs, timed batch 1; ``repeats`` rounds over all of them.
    threads : sequence of int
        wasm thread counts; more than 1 is served cross-origin isolated.
    """
    why = browser_missing()
    if why:
        raise SystemExit(f"--browser: {why}")
    meta = read_sidecar(prompt_dir)
    precisions = ["fp32"] + (["int8"] if INT8_FILE in meta["files"] else [])
    rows = []
    with tempfile.TemporaryDirectory(prefix="lopa-web-bench-") as tmp:
        for prec in precisions:
            web = Path(tmp) / f"web-{prec}"
            info = write_web_bundle(prompt_dir, web, int8=prec == "int8")
            for t in threads:
                with serve_static(tmp, isolated=t > 1) as base:
                    res = run_in_browser(f"{base}{web.name}/", list(sentences), threads=t, repeats=repeats, timeout=900)
                ts = res["times_ms"]
                rows.append({
                    "engine": f"browser-wasm-{prec}" + (f"-{(meta.get('int8') or {}).get('mode')}" if prec == "int8" else ""),
                    "precision": prec, "threads": res["threads"], "requested_threads": t,
                    "cross_origin_isolated": res["isolated"], "batch": 1,
                    "median_ms": statistics.median(ts), "p90_ms": float(np.percentile(ts, 90)), "n": len(ts),
                    "load_ms": res["load_ms"], "first_z_ms": res["first_z_ms"],
                    "bundle_bytes": info["bytes"], "model_bytes": info["files"][info["model_file"]],
                    "browser": res["version"], "onnxruntime_web": info["versions"]["onnxruntime-web"],
                })
    return rows


def compare_rows(browser: list[dict[str, Any]], python: list[dict[str, Any]], target: float = 2.5) -> list[dict[str, Any]]:
    """Browser batch-1 median over Python onnxruntime's at the same precision and thread count."""
    out = []
    for b in browser:
        prefix = "ort-fp32" if b["precision"] == "fp32" else "ort-int8"
        py = [r for r in python if r["engine"].startswith(prefix) and r["batch"] == 1 and r["threads"] == b["threads"]]
        if b["precision"] == "int8":
            mode = b["engine"].removeprefix("browser-wasm-int8-")
            py = [r for r in py if r["engine"] == f"ort-int8-{mode}"] or py
        if not py:
            continue
        ratio = b["median_ms"] / py[0]["median_ms"]
        out.append({"browser": b["engine"], "python": py[0]["engine"], "threads": b["threads"],
                    "browser_ms": b["median_ms"], "python_ms": py[0]["median_ms"], "ratio": ratio,
                    "target": target, "within_target": ratio <= target})
    return out


def browser_agreement(pm, data, prompt_dir: str | Path, *, int8: bool = True, batch_size: int = 32) -> dict[str, Any]:
    """Predictions of the frozen model fed Z computed in the browser, against fp32 (PyTorch Z) and Python onnxruntime.

    Every example of ``data`` (e.g. the full SST-2 dev set) gets its Z in headless Chromium (batch 1);
    the frozen model then classifies with those Zs in Python.
    """
    texts = [it.enc_text for it in data.items]
    with tempfile.TemporaryDirectory(prefix="lopa-web-agree-") as tmp:
        web = Path(tmp) / "web"
        write_web_bundle(prompt_dir, web, int8=int8)
        with serve_static(tmp) as base:
            res = run_in_browser(f"{base}web/", texts, timeout=3600)
    zs = np.concatenate(decode_items(res))  # N×T×d, in data order
    pos = iter(range(0, len(texts), batch_size))

    def from_browser(batch_texts: list) -> np.ndarray:
        s = next(pos)
        return zs[s : s + len(batch_texts)]

    ref = predict_logits(pm, data, None, batch_size).argmax(-1)
    rt = PromptRuntime(prompt_dir, int8=int8)
    py = predict_logits(pm, data, rt.prompts, batch_size).argmax(-1)
    got = predict_logits(pm, data, from_browser, batch_size).argmax(-1)
    z_py = rt.prompts(texts[:64], batch_size=1)
    labels = np.asarray(data.labels)
    return {
        "precision": "int8" if int8 else "fp32", "mode": (read_sidecar(prompt_dir).get("int8") or {}).get("mode"),
        "examples": len(texts), "agreement_vs_fp32": float((got == ref).mean()),
        "agreement_vs_python_ort": float((got == py).mean()), "python_ort_agreement_vs_fp32": float((py == ref).mean()),
        "accuracy_browser": float((got == labels).mean()), "accuracy_fp32": float((ref == labels).mean()),
        "max_abs_z_diff_vs_python_ort_first64": float(np.abs(zs[:64] - z_py).max()),
    }
