"""Unit tests of bench/common.py's provenance bookkeeping for resumed and merged result files."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import common  # noqa: E402


def _old(command: str, earlier: list | None = None) -> dict:
    meta = {"command": command, "commit": "abc", "dirty": False, "date": "2026-12-01T10:00:00+00:00",
            "contention": None, "machine": {"nproc": 2}}
    if earlier is not None:
        meta["earlier_invocations"] = earlier
    return {"meta": meta, "results": []}


def test_resume_keeps_every_earlier_invocation() -> None:
    meta: dict = {"command": "third"}
    first = {"command": "first", "commit": "x", "dirty": True, "date": "d", "contention": "busy"}
    common.record_source(meta, Path("out/quality-causal.json"), _old("second", [first]), "quality-causal")
    assert [e["command"] for e in meta["earlier_invocations"]] == ["first", "second"]
    assert set(meta["earlier_invocations"][1]) == set(common.PROVENANCE_KEYS)  # no machine dump
    assert "merged_from" not in meta


def test_merge_records_the_other_file() -> None:
    meta: dict = {"command": "now"}
    common.record_source(meta, Path("shard-b.json"), _old("shard"), "quality-causal")
    common.record_source(meta, Path("shard-c.json"), _old("shard c"), "quality-causal")
    assert [(e["file"], e["command"]) for e in meta["merged_from"]] == [("shard-b.json", "shard"),
                                                                         ("shard-c.json", "shard c")]
    assert "earlier_invocations" not in meta


def test_contention_note_does_not_count_the_benchmarks_own_load(monkeypatch) -> None:
    monkeypatch.setattr(common.os, "cpu_count", lambda: 2)
    # idle at the start, 2.1 at the end from its own 2 Ray workers: no other job
    assert common.contention_note([0.4], [2.1], own=2) is None
    # the same end load from a 1-thread benchmark means another job ran beside it
    note = common.contention_note([0.4], [2.9], own=1)
    assert note is not None and "2.9 at the end" in note and "about 1 of it this benchmark's own" in note
    # a busy machine at the start is contention whatever the benchmark did
    assert common.contention_note([3.0], [0.1], own=2) is not None


def test_start_load_tells_a_finished_jobs_residue_from_a_running_one(monkeypatch) -> None:
    monkeypatch.setattr(common.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(common.os, "getloadavg", lambda: (2.0, 1.5, 0.9))
    # the previous benchmark of a chain just ended: its 1-min load lingers, the cores are idle
    monkeypatch.setattr(common, "busy_cores", lambda seconds=1.0: 0.05)
    load = common.start_load()
    assert load == [0.05, 1.5, 0.9]
    assert common.contention_note(load, [2.1], own=2) is None
    # another job is still running: the cores are busy, the 1-min figure stands
    monkeypatch.setattr(common, "busy_cores", lambda seconds=1.0: 1.9)
    assert common.contention_note(common.start_load(), [2.1], own=2) is not None
    # no /proc/stat: the load average is kept as it is
    monkeypatch.setattr(common, "busy_cores", lambda seconds=1.0: None)
    assert common.start_load() == [2.0, 1.5, 0.9]


def test_busy_cores_reads_this_machine() -> None:
    busy = common.busy_cores(0.2)
    if not Path("/proc/stat").exists():
        assert busy is None
        return
    assert busy is not None and 0.0 <= busy <= (os.cpu_count() or 1) + 1e-6
