"""``bench/quality_steps.py``: dev accuracy against steps over result files of several budgets (no training)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import quality_steps  # noqa: E402


def _file(path: Path, budget: str, steps: int, devs: dict[str, list[float]]) -> Path:
    main = {m: {"steps": steps if m != "zero-shot" else 0, "mean": sum(d) / len(d),
                "std": (0.0 if len(d) == 1 else math.sqrt(sum((x - sum(d) / len(d)) ** 2 for x in d) / (len(d) - 1))),
                "n": len(d), "devs": d, "init": "vocab", "lr": 1e-2} for m, d in devs.items()}
    path.write_text(json.dumps({"meta": {"commit": "abc"}, "protocol": {"budget": budget},
                                "summary": {"main": {"sst2": main}}}))
    return path


def test_steps_table_gaps_and_plot(tmp_path: Path, capsys) -> None:
    a = _file(tmp_path / "a.json", "small", 125, {"zero-shot": [51.5], "pt": [84.0, 82.0], "lopa": [79.0, 79.0]})
    b = _file(tmp_path / "b.json", "medium", 250, {"pt": [84.0, 84.0], "lopa": [82.0, 84.0], "lora16": [87.0]})
    data = quality_steps.main(["--files", f"{b},{a}", "--out-dir", str(tmp_path), "--name", "s"])
    assert [r["steps"] for r in data["rows"]["lopa"]] == [125, 250]  # sorted by steps, whatever the file order
    g = {(x["pair"], x["steps"]): x for x in data["gaps"]}
    assert g[("lopa - pt", 125)]["diff"] == pytest.approx(-4.0)
    assert g[("lopa - pt", 125)]["se"] == pytest.approx(math.sqrt(2 / 2 + 0 / 2))
    assert g[("lopa - pt", 250)]["diff"] == pytest.approx(-1.0)
    assert g[("lopa - lora16", 250)]["se"] is None  # one LoRA seed: no standard error
    assert ("lopa - lora16", 125) not in g
    out = capsys.readouterr().out
    assert "zero-shot (no tuning, 0 steps): 51.5" in out and "lopa - pt at 250 steps: -1.0" in out
    assert "| method | dev, 125 steps | dev, 250 steps |" in out
    assert "| LoRA r=16 | – | 87.0 ± 0.0 (n=1) |" in out  # one cell per step count, none for zero-shot's 0
    assert (tmp_path / "s.png").stat().st_size > 0 and json.loads((tmp_path / "s.json").read_text())["gaps"]


def test_a_file_without_main_rows_is_a_one_line_error(tmp_path: Path, capsys) -> None:
    a = _file(tmp_path / "a.json", "small", 125, {"pt": [84.0]})
    bad = tmp_path / "bad.json"
    bad.write_text("{\"runs\": []}")
    with pytest.raises(SystemExit) as e:
        quality_steps.main(["--files", f"{a},{bad}", "--out-dir", str(tmp_path), "--name", "s"])
    assert e.value.code == 2
    assert "bad.json: not a causal quality result with SST-2 main rows" in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "s.json").exists()


def test_fewer_than_two_files_is_a_one_line_error(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as e:
        quality_steps.main(["--out-dir", str(tmp_path)])
    assert e.value.code == 2
    assert "need at least two result files" in capsys.readouterr().err.strip().splitlines()[-1]
