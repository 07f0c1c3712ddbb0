"""Smoke test of the benchmark scripts: each runs end to end on a tiny budget (no timing assertions)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

SCRIPTS = {  # case: (script, arguments)
    "communication": ("communication", ["--models", "0,1,2"]),
    "throughput": ("throughput", ["--repeats", "1", "--steps", "1", "--batch-size", "4"]),
    "throughput-causal": ("throughput", ["--setting", "causal", "--repeats", "1", "--steps", "1", "--batch-size", "4"]),
    "quality": ("quality", ["--setting", "classifier", "--budget", "smoke"]),
    "quality-causal": ("quality", ["--budget", "smoke", "--threads", "1"]),
    "federated": ("federated", ["--budget", "smoke"]),
    "federated-causal": ("federated", ["--setting", "causal", "--budget", "smoke"]),
    "scale": ("scale", ["--counts", "2", "--per-client", "8", "--local-steps", "1"]),
    "robust": ("robust", ["--budget", "smoke", "--strategies", "fedavg,fedmedian", "--attacks", "nan,signflip"]),
    "robust-dp": ("robust", ["--budget", "smoke", "--dp", "--dp-noise", "1.0"]),
    "prompt-removed": ("prompt_removed", ["--train", "16", "--dev", "16", "--seeds", "0", "--methods", "head,pt",
                                          "--threads", "1"]),
}
EXPECTED = {  # result file written by each case, and keys that must be in it
    "communication": ("communication.json", ("meta", "results", "flowertune")),
    "throughput": ("throughput.json", ("meta", "summary", "ratios", "targets", "profiles")),
    "throughput-causal": ("throughput-causal.json", ("meta", "summary", "ratios", "targets", "profiles")),
    "quality": ("quality-smoke.json", ("meta", "protocol", "runs", "summary")),
    "quality-causal": ("quality-causal-smoke.json", ("meta", "protocol", "runs", "summary")),
    "federated": ("federated-smoke.json", ("meta", "setup", "results")),
    "federated-causal": ("federated-causal-smoke.json", ("meta", "setup", "results", "gaps")),
    "scale": ("scale.json", ("meta", "setup", "results")),
    "robust": ("robust-smoke.json", ("meta", "setup", "results", "summary")),
    "robust-dp": ("robust-dp-smoke.json", ("meta", "setup", "results", "summary")),
    "prompt-removed": ("prompt-removed.json", ("meta", "protocol", "runs", "summary", "causal")),
}


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("case", list(SCRIPTS))
def test_bench_script_runs(case: str, tmp_path: Path) -> None:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    script, script_args = SCRIPTS[case]
    cmd = [sys.executable, str(ROOT / "bench" / f"{script}.py"), *script_args, "--out-dir", str(tmp_path)]
    if script in ("federated", "scale", "robust"):
        cmd += ["--work-dir", str(tmp_path / "work")]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    fname, keys = EXPECTED[case]
    data = json.loads((tmp_path / fname).read_text())
    for k in keys:
        assert k in data, f"{fname} lacks {k!r}"
    meta = data["meta"]
    for k in ("command", "commit", "seeds", "versions", "date", "machine"):
        assert k in meta
    assert "|" in proc.stdout  # a markdown table was printed
    assert list(tmp_path.glob("*.png")) or script == "scale"  # scale plots only with >1 count
    if script == "federated":
        assert all(r["status"] == "ok" for r in data["results"]), data["results"]
    if script == "scale":
        (rec,) = data["results"]
        assert rec["status"] == "ok" and rec["model_loads_per_worker_max"] == 1
    if case == "quality":
        assert data["summary"]["main"]["sst2"], data["summary"]
    if case == "quality-causal":
        main = data["summary"]["main"]["sst2"]
        for m in ("zero-shot", "pt", "idpg", "lopa", "lora16", "lora8"):
            assert m in main, sorted(main)
        assert main["zero-shot"]["trainable_params"] == 0
        runs = {(r["method"], r["init"]) for r in data["runs"]}
        assert ("pt", "vocab") in runs and ("lopa", "vocab") in runs
        for r in data["runs"]:
            assert r["curve"] and r["curve"][0]["step"] == 0, r["method"]
            if r["method"] in ("pt", "lopa", "idpg"):  # how large the prompt is, and how much x moves it
                st = r["prompt_stats"]
                assert st["start"]["z_row_norm"] > 0 and st["end"]["z_between_std"] >= 0, st
                assert ("gate_between_std" in st["end"]) == (r["method"] == "lopa"), st
                if r["method"] == "pt":
                    assert st["end"]["z_between_std"] == 0.0  # one prompt for every input
            if r["method"] != "zero-shot":
                assert r["curve"][-1]["step"] == r["steps"] > 0, r["method"]
        # resuming skips every finished run
        again = subprocess.run([*cmd, "--resume"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
        assert again.returncode == 0, again.stderr[-3000:]
        assert len(json.loads((tmp_path / fname).read_text())["runs"]) == len(data["runs"])
