"""Smoke test of the benchmark scripts: each runs end to end on a tiny budget (no timing assertions)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

SCRIPTS = {
    "communication": ["--models", "0,1,2"],
    "throughput": ["--repeats", "1", "--steps", "1", "--batch-size", "4"],
    "quality": ["--budget", "smoke"],
    "federated": ["--budget", "smoke"],
    "scale": ["--counts", "2", "--per-client", "8", "--local-steps", "1"],
}
EXPECTED = {  # result file written by each script, and keys that must be in it
    "communication": ("communication.json", ("meta", "results", "flowertune")),
    "throughput": ("throughput.json", ("meta", "summary", "ratios", "targets", "profiles")),
    "quality": ("quality-smoke.json", ("meta", "protocol", "runs", "summary")),
    "federated": ("federated-smoke.json", ("meta", "setup", "results")),
    "scale": ("scale.json", ("meta", "setup", "results")),
}


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("script", list(SCRIPTS))
def test_bench_script_runs(script: str, tmp_path: Path) -> None:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, str(ROOT / "bench" / f"{script}.py"), *SCRIPTS[script], "--out-dir", str(tmp_path)]
    if script in ("federated", "scale"):
        cmd += ["--work-dir", str(tmp_path / "work")]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    fname, keys = EXPECTED[script]
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
    if script == "quality":
        assert data["summary"]["main"]["sst2"], data["summary"]
