"""The plan of ``bench/quality.py`` (causal setting) with ``--points-from``: a dry run, no model loaded."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import quality_causal  # noqa: E402


def _run(method: str, init: str, lr: float, val: float, seed: int = 0, grid: bool = True) -> dict:
    return {"task": "sst2", "method": method, "init": init, "lr": lr, "seed": seed, "grid": grid, "val": val}


@pytest.fixture
def small(tmp_path: Path) -> Path:
    f = tmp_path / "quality-causal.json"
    runs = [_run("pt", "vocab", 3e-3, 0.80), _run("pt", "vocab", 1e-2, 0.84), _run("pt", "normal", 3e-3, 0.70),
            _run("pt", "vocab", 3e-3, 0.99, seed=1, grid=False),  # another seed never selects
            _run("lopa", "vocab", 3e-3, 0.81)]
    f.write_text(json.dumps({"meta": {}, "runs": runs}))
    return f


def test_points_from_trains_only_each_methods_selected_point(small: Path, tmp_path: Path, capsys) -> None:
    quality_causal.main(["--budget", "medium", "--points-from", str(small), "--methods", "pt,lopa,lopa-r1",
                         "--out-dir", str(tmp_path / "out"), "--dry-run"])
    plan = capsys.readouterr().out.split("\n")
    assert [line for line in plan if line] == [
        "to do sst2 pt vocab 0.01 0 True", "to do sst2 lopa vocab 0.003 0 True",
        "to do sst2 pt vocab 0.01 1 False", "to do sst2 pt vocab 0.01 2 False",
        "to do sst2 lopa vocab 0.003 1 False", "to do sst2 lopa vocab 0.003 2 False",
        "to do sst2 lopa-r1 vocab 0.003 0 True",  # ablations at LoPA's point
    ]


def test_points_from_without_the_method_is_a_one_line_error(small: Path, tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        quality_causal.main(["--budget", "medium", "--points-from", str(small), "--methods", "idpg",
                             "--out-dir", str(tmp_path), "--dry-run"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.endswith(f"--points-from {small}: no selected point of idpg on sst2 seed 0 there")


def test_points_from_a_missing_file_is_a_one_line_error(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit):
        quality_causal.main(["--points-from", str(tmp_path / "none.json"), "--dry-run", "--out-dir", str(tmp_path)])
    assert "--points-from" in capsys.readouterr().err.splitlines()[-1]


def test_deadline_hhmm_is_the_next_such_time_even_after_midnight() -> None:
    import datetime as dt

    now = dt.datetime(2026, 12, 1, 22, 57, tzinfo=dt.timezone.utc)
    assert quality_causal.parse_deadline("23:30", now) == now.replace(hour=23, minute=30)
    assert quality_causal.parse_deadline("00:15", now) == dt.datetime(2026, 12, 2, 0, 15, tzinfo=dt.timezone.utc)
    assert quality_causal.parse_deadline("2026-12-02T01:00", now) == dt.datetime(2026, 12, 2, 1, 0,
                                                                                tzinfo=dt.timezone.utc)


@pytest.mark.parametrize("bad", ["25:00", "ab:cd", "tomorrow"])
def test_bad_deadline_is_a_one_line_error(bad: str, tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as e:
        quality_causal.main(["--budget", "smoke", "--deadline", bad, "--out-dir", str(tmp_path), "--dry-run"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"--deadline '{bad}': expected HH:MM" in err


def test_val_dev_gap_per_method_over_runs_with_dev() -> None:
    runs = [_run("pt", "vocab", 1e-2, 0.84) | {"dev": 0.85}, _run("pt", "vocab", 3e-3, 0.80) | {"dev": 0.80},
            _run("lopa", "vocab", 3e-3, 0.82) | {"dev": 0.78}, _run("lopa", "vocab", 1e-3, 0.81) | {"dev": None},
            _run("zero-shot", "-", 0.0, 0.51) | {"dev": 0.52}, _run("lopa", "vocab", 3e-3, 0.9, seed=1) | {"dev": 0.8},
            {**_run("lopa", "vocab", 3e-3, 0.9), "task": "rte", "dev": 0.5}]
    gap = quality_causal.val_dev_gap(runs)
    assert set(gap) == {"pt", "lopa"}
    assert gap["pt"]["n"] == 2 and gap["pt"]["mean"] == pytest.approx(-0.5)
    assert gap["lopa"]["n"] == 2 and gap["lopa"]["mean"] == pytest.approx(7.0)


def test_render_only_with_no_runs_is_a_one_line_error_and_writes_nothing(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as e:
        quality_causal.main(["--render-only", "--name", "none", "--out-dir", str(tmp_path)])
    assert e.value.code == 2
    assert "--render-only: nothing to render" in capsys.readouterr().err.strip().splitlines()[-1]
    assert list(tmp_path.iterdir()) == []


def test_render_only_reads_the_result_file_without_resume(tmp_path: Path, capsys) -> None:
    f = tmp_path / "quality-causal.json"
    runs = [_run("pt", "vocab", 1e-2, 0.84) | {"dev": 0.85, "seconds": 1.0, "trainable_params": 5760, "steps": 2,
                                               "examples_seen": 32, "curve": []}]
    f.write_text(json.dumps({"meta": {}, "protocol": {"embedding_element_std": 0.05}, "runs": runs}))
    quality_causal.main(["--render-only", "--name", "quality-causal", "--out-dir", str(tmp_path)])
    after = json.loads(f.read_text())
    assert after["runs"] == runs  # a render without --resume keeps every run
    assert after["summary"]["main"]["sst2"]["pt"]["mean"] == pytest.approx(85.0)


def test_transfer_rows_name_their_metric_and_keep_accuracy() -> None:
    base = {"init": "vocab", "lr": 3e-2, "seed": 0, "grid": False, "val": 0.8, "seconds": 1.0, "curve": [],
            "trainable_params": 5760, "steps": 2, "examples_seen": 32}
    runs = [base | {"task": "mrpc", "method": "pt", "dev": 0.81, "dev_metrics": {"accuracy": 0.70, "f1": 0.81}},
            base | {"task": "rte", "method": "pt", "dev": 0.55, "dev_metrics": {"accuracy": 0.55}},
            base | {"task": "cola", "method": "pt", "dev": 0.12, "dev_metrics": {"accuracy": 0.69, "mcc": 0.12}}]
    t = quality_causal.summarise(runs)["transfer"]
    assert t["mrpc"]["pt"]["metric"] == "f1" and t["mrpc"]["pt"]["dev_accuracy"] == pytest.approx(70.0)
    assert t["rte"]["pt"]["metric"] == "accuracy" and t["rte"]["pt"]["mean"] == pytest.approx(55.0)
    assert t["cola"]["pt"]["metric"] == "mcc" and t["cola"]["pt"]["dev_accuracy"] == pytest.approx(69.0)


@pytest.mark.parametrize("with_ablation, panels", [(False, 3), (True, 4)])
def test_plot_draws_the_ablation_panel_only_when_there_are_ablations(
        with_ablation: bool, panels: int, tmp_path: Path, monkeypatch) -> None:
    base = {"task": "sst2", "init": "vocab", "lr": 1e-2, "seed": 0, "grid": True, "val": 0.8, "dev": 0.8,
            "seconds": 1.0, "trainable_params": 5760, "steps": 2, "examples_seen": 32,
            "curve": [{"step": 0, "acc": 0.5, "loss": 0.7}, {"step": 2, "acc": 0.8, "loss": 0.5}], "losses": [0.7, 0.6]}
    runs = [base | {"method": "pt"}, base | {"method": "lopa", "init": "scaled"}]
    if with_ablation:
        runs.append(base | {"method": "lopa-concat", "init": "scaled"})
    data = {"runs": runs, "protocol": {"batch": 16, "curve_n": 128, "seeds": [0]},
            "summary": quality_causal.summarise(runs)}
    seen: list = []
    monkeypatch.setattr(quality_causal.common, "save_fig", lambda fig, name, out: seen.append(len(fig.axes)))
    quality_causal.plot(data, tmp_path, "q")
    assert seen == [panels]


def test_large_budget_is_500_steps_at_each_methods_selected_point(small: Path, tmp_path: Path, capsys) -> None:
    b = quality_causal.BUDGETS["large"]
    assert b["train"] * b["epochs"] // b["batch"] == 500
    quality_causal.main(["--budget", "large", "--points-from", str(small), "--methods", "pt",
                         "--out-dir", str(tmp_path / "out"), "--dry-run"])
    plan = [line for line in capsys.readouterr().out.split("\n") if line]
    assert plan == ["to do sst2 pt vocab 0.01 0 True", "to do sst2 pt vocab 0.01 1 False",
                    "to do sst2 pt vocab 0.01 2 False"]


def test_label_above_only_for_the_best_of_close_parameter_counts() -> None:
    ms = {"lora8": {"trainable_params": 645_120, "mean": 86.1}, "lora16": {"trainable_params": 1_290_240, "mean": 87.1},
          "pt": {"trainable_params": 5_760, "mean": 83.8}}
    assert quality_causal._label_above("lora16", ms) and not quality_causal._label_above("lora8", ms)
    assert quality_causal._label_above("pt", ms)  # no neighbour within 3x
