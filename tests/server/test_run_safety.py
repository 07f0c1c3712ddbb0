"""``lopa-fed simulate`` / ``deploy-local`` never lose a run and never report a failed one as done (issue 14 A).

Fast tests run the real command in-process (``lopa_fed.cli.main``) against fabricated run
directories and check the exit code (2), the one error line, and that every existing file is
byte-identical afterwards: these refusals happen before Flower starts. The slow test runs a
real simulation whose clients all fail (a bad private-state file on ``--resume``).
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from lopa_fed.checkpoint import save_tensors  # noqa: E402
from lopa_fed.cli import main  # noqa: E402
from server import guard  # noqa: E402
from server.cli import _report  # noqa: E402
from server.launch import LaunchResult  # noqa: E402

LOPA_FED = Path(sys.executable).parent / "lopa-fed"
TINY = ["--num-clients", "2", "--rounds", "1", "--local-steps", "1", "--pool-size", "40", "--max-test-examples", "8"]


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative path → bytes)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def finished_run(out: Path) -> Path:
    """A directory that looks like a completed 1-round run with two clients' private heads."""
    (out / "global").mkdir(parents=True)
    (out / "run.json").write_text(json.dumps({"status": "completed", "state-tag": "t0"}))
    (out / "state.json").write_text(json.dumps({"state-tag": "t0", "last-round": 1}))
    (out / "rounds.json").write_text("[]")
    for name in ("round-000.safetensors", "round-001.safetensors", "latest.safetensors"):
        save_tensors(out / "global" / name, {"prompt.zs": torch.ones(4, 3)})
    for i in range(2):
        save_tensors(out / "private" / f"partition-{i}-of-2.safetensors", {"prompt.u": torch.full((2,), float(i))})
    return out


def run(capsys, *argv: str) -> tuple[int, str]:
    """``lopa-fed ARGV`` in-process: ``(exit code, the one error line)``."""
    code = main(list(argv))
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "skipping the" not in line]
    assert len(err) <= 1, err
    return code, err[0] if err else ""


@pytest.mark.parametrize("command", ["simulate", "deploy-local"])
def test_existing_run_is_refused_without_resume_or_force(tmp_path, capsys, command):
    out = finished_run(tmp_path / "run")
    before = snapshot(out)
    code, err = run(capsys, command, "--out", str(out))
    assert code == 2
    assert err == (
        f"lopa-fed: error: {out} already holds a run (run.json, state.json, global, rounds.json, 2 client "
        f"private-state file(s) in {out / 'private'}); pass --resume to continue it, or --force to delete it "
        "(its global tensors and every client's private state) and start a new run"
    )
    assert snapshot(out) == before  # nothing written: no .lock, no flwr-home, no logs


def test_private_state_alone_makes_a_run(tmp_path, capsys):
    private = finished_run(tmp_path / "old") / "private"
    before = snapshot(private)
    code, err = run(capsys, "simulate", "--out", str(tmp_path / "new"), "--private-dir", str(private))
    assert code == 2 and f"2 client private-state file(s) in {private}" in err and "--force" in err
    assert snapshot(private) == before and not (tmp_path / "new").exists()


def _corrupt_latest(out: Path) -> None:
    (out / "global" / "latest.safetensors").write_bytes(b"\x00garbage")


def _nan_latest(out: Path) -> None:
    save_tensors(out / "global" / "latest.safetensors", {"prompt.zs": torch.full((4, 3), float("nan"))})


def _garbage_state(out: Path) -> None:
    (out / "state.json").write_text("{not json")


def _state_without_round(out: Path) -> None:
    (out / "state.json").write_text(json.dumps({"state-tag": "t0"}))


def _no_state(out: Path) -> None:
    (out / "state.json").unlink()


def _corrupt_private(out: Path) -> None:
    (out / "private" / "partition-1-of-2.safetensors").write_bytes(b"truncated")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_corrupt_latest, "cannot resume from {out}: {out}/global/latest.safetensors is not a valid safetensors file"),
        (_nan_latest, "cannot resume from {out}: {out}/global/latest.safetensors: tensor(s) prompt.zs hold NaN or Inf"),
        (_garbage_state, "cannot resume from {out}: {out}/state.json is unreadable (Expecting property name"),
        (_state_without_round, "cannot resume from {out}: {out}/state.json is unreadable ('last-round')"),
        (_no_state, "cannot resume: {out}/state.json does not exist (no round of a run in {out} completed)"),
        (
            _corrupt_private,
            "cannot resume: client private state {out}/private/partition-1-of-2.safetensors is unreadable",
        ),
    ],
)
def test_resume_refuses_unusable_files_before_flower_starts(tmp_path, capsys, damage, message):
    out = finished_run(tmp_path / "run")
    damage(out)
    before = snapshot(out)
    t0 = time.time()
    code, err = run(capsys, "simulate", "--resume", "--out", str(out), *TINY)
    assert code == 2
    assert err.startswith("lopa-fed: error: " + message.format(out=out)), err
    assert snapshot(out) == before  # run.json still says what it said; nothing was overwritten
    assert time.time() - t0 < 60


def test_corrupt_private_state_may_be_replaced_only_when_asked(tmp_path, capsys):
    out = finished_run(tmp_path / "run")
    _corrupt_private(out)
    code, err = run(capsys, "simulate", "--resume", "--out", str(out), *TINY)
    assert code == 2 and "--set on-bad-private-state=fresh" in err
    # with the documented setting the launcher lets the client decide (it moves the file to .bad)
    guard.check_run_dir(out, {"resume": True, "on-bad-private-state": "fresh"})


def test_missing_data_dir_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    code, err = run(capsys, "simulate", "--out", str(out), "--data-dir", str(tmp_path / "nonexistent"), *TINY)
    assert code == 2
    assert err == (
        f"lopa-fed: error: data directory {tmp_path / 'nonexistent'} does not exist (from --data-dir / data_dir argument)"
    )
    assert not out.exists()


def test_resume_and_force_together_are_refused(tmp_path, capsys):
    out = finished_run(tmp_path / "run")
    before = snapshot(out)
    code, err = run(capsys, "deploy-local", "--resume", "--force", "--out", str(out))
    assert (code, err) == (2, "lopa-fed: error: --resume continues a run and --force replaces it; give one of them")
    assert snapshot(out) == before


def test_a_second_launcher_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    with open(out / guard.LOCK_FILE, "w") as held:  # another launcher holds the run directory
        held.write("4242\n")
        held.flush()
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        before = snapshot(out)
        code, err = run(capsys, "simulate", "--out", str(out), *TINY)
    assert code == 2
    assert err == (
        f"lopa-fed: error: {out} is in use by another lopa-fed launcher (pid 4242); wait for it to end or use "
        "another --out"
    )
    assert snapshot(out) == before and not (out / "flwr-home").exists()


def test_force_deletes_the_old_run_and_marks_the_new_one_running(tmp_path):
    out = finished_run(tmp_path / "run")
    (out / "logs").mkdir()
    (out / "logs" / "flwr-run.log").write_text("old")
    with guard.claim(out, {}, force=True):
        assert sorted(p.name for p in out.iterdir()) == [".lock", "private", "run.json"]
        assert not list((out / "private").iterdir())
        assert json.loads((out / "run.json").read_text())["status"] == "running"
        with pytest.raises(guard.RunBusyError, match="in use by another lopa-fed launcher"):
            with guard.claim(out, {}, force=True):
                pass
    with guard.claim(out, {}, force=True):  # the lock went with the first claim
        pass


def test_a_run_that_stopped_is_marked_failed_with_its_cause(tmp_path):
    out = finished_run(tmp_path / "run")
    (out / "run.json").write_text(json.dumps({"status": "running"}))
    log = out / "logs" / "flwr-run.log"
    log.parent.mkdir()
    log.write_text(
        "INFO : Starting\nTraceback (most recent call last):\n"
        "lopa_fed.errors.CheckpointError: cannot resume from /x: saved globals ['a'] do not match ['b']\n"
    )
    error = guard.finish(out, 1, log)
    assert error == "stopped before round 1 completed: CheckpointError: cannot resume from /x: saved globals ['a'] do not match ['b']"
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "failed" and info["error"] == error
    assert guard.finish(out, 0, log) is not None  # "failed" is not "completed", whatever flwr run returned


def _record(rnd: int, replied: int, failed: int, reason: str) -> dict:
    return {
        "round": rnd, "sampled": replied + failed, "replied": replied, "failed": failed, "rejected": 0,
        "failed_reasons": [{"node": 1, "reason": reason}] * failed, "rejected_reasons": [],
        "eval_replied": replied, "eval_failed": failed,
        "eval_failed_reasons": [{"node": 1, "reason": reason}] * failed,
        "bytes_up": 0, "bytes_down": 0, "seconds": 1.0,
    }


def test_summary_names_the_round_and_cause_and_fails_when_every_client_failed(tmp_path, capsys):
    from rich.console import Console

    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"status": "completed"}))
    reason = "error reply: <class 'lopa_fed.errors.DataError'>:<'no data'>"
    rounds = [_record(1, 1, 1, reason), _record(2, 0, 2, reason)]
    res = LaunchResult(0, 3.0, out, rounds, {}, [])
    with pytest.raises(guard.RunFailedError) as info:
        _report(Console(), res, "simulate", out)
    assert str(info.value) == (
        "simulate ran every round, but round 2: all 2 clients failed in training (2 failed, 0 rejected): "
        "DataError: no data "
        f"(and 1 more such failure(s)); logs: {out / 'logs'}"
    )
    shown = capsys.readouterr().out
    assert "round 1: 1 failed, 0 rejected of 2 clients: DataError: no data" in shown
    assert "round 2: every client failed in evaluation: DataError: no data" in shown
    res.first_round = 3  # a resumed launch does not fail again for an earlier launch's rounds
    assert _report(Console(), res, "simulate", out) == 0
    res.first_round, res.rounds = 1, [_record(1, 2, 0, "")]
    assert _report(Console(), res, "simulate", out) == 0
    res.error = "stopped after round 1: KeyboardInterrupt: "
    with pytest.raises(guard.RunFailedError, match="simulate did not complete: stopped after round 1"):
        _report(Console(), res, "simulate", out)


def test_installed_command_refuses_an_existing_run(tmp_path):
    if not LOPA_FED.is_file():
        pytest.skip(f"{LOPA_FED} is not installed")
    out = finished_run(tmp_path / "run")
    before = snapshot(out)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    res = subprocess.run(
        [str(LOPA_FED), "deploy-local", "--out", str(out)], capture_output=True, text=True, env=env, timeout=120
    )
    lines = [line for line in res.stderr.splitlines() if line.strip() and "skipping the" not in line]
    assert res.returncode == 2 and len(lines) == 1 and "already holds a run" in lines[0], res.stderr
    assert snapshot(out) == before


@pytest.mark.slow
def test_simulation_whose_clients_all_fail_exits_non_zero_and_keeps_their_files(tmp_path, capsys):
    """A real resumed simulation: each client's private-state file has the wrong tensors (but this run's tag)."""
    from lopa_fed.federation import FedSettings, federated_names, new_model

    out = tmp_path / "run"
    argv = ["simulate", "--resume", "--out", str(out), *TINY[:2], "--rounds", "2", *TINY[4:]]
    settings = FedSettings.from_run_config(
        {"num-server-rounds": 2, "local-steps": 1, "pool-size": 40, "max-test-examples": 8}
    )
    model = new_model(settings)
    shared = model.state(federated_names(model.roles(), settings.federate))
    (out / "global").mkdir(parents=True)
    save_tensors(out / "global" / "latest.safetensors", shared)
    (out / "state.json").write_text(json.dumps({"state-tag": "t0", "last-round": 1}))
    (out / "run.json").write_text(json.dumps({"status": "completed"}))
    meta = {"format": "lopa-fed-private/1", "state-tag": "t0", "fingerprint": settings.fingerprint(), "round": "1"}
    for i in range(2):
        save_tensors(out / "private" / f"partition-{i}-of-2.safetensors", {"bogus": torch.zeros(3)}, meta)
    private = snapshot(out / "private")
    code, err = run(capsys, *argv)
    assert code == 2
    assert err.startswith("lopa-fed: error: simulate ran every round, but round 2: all 2 clients failed in training"), err
    assert (
        f"(2 failed, 0 rejected): PrivateStateError: private state {out / 'private'}/partition-" in err
        and "of this run cannot be used: it holds the wrong tensors (bogus, prompt.u_head" in err
        and "--set on-bad-private-state=fresh" in err
    ), err
    assert snapshot(out / "private") == private  # the bad files are not overwritten
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "completed" and info["rounds_without_clients"] == [2]


@pytest.mark.slow
def test_simulation_whose_server_fails_is_not_reported_done(tmp_path, capsys):
    """A real resumed simulation whose ServerApp refuses the saved globals (readable, but of another run's model).

    Before, the launcher read the old run's ``"completed"`` and printed "done" with exit 0.
    """
    out = finished_run(tmp_path / "run")  # its globals hold only a 4×3 prompt.zs: not this model's tensors
    code = main(["simulate", "--resume", "--out", str(out), *TINY])
    captured = capsys.readouterr()
    err = "\n".join(line for line in captured.err.splitlines() if line.strip() and "skipping the" not in line)
    assert code == 2
    assert "\n" not in err and "done" not in captured.out and "run did not complete" not in captured.out
    assert err.startswith(
        f"lopa-fed: error: simulate did not complete: stopped before round 1 completed: CheckpointError: cannot "
        f"resume from {out}: saved globals ['prompt.zs'] do not match ['head.bias', 'head.weight', 'prompt.zs']"
    ), err
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "failed" and info["error"] in err
