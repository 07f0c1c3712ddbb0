"""``lopa-fed export --run RUN --partition I``: one client's personalised generator from a federated run.

The fast tests lay out a run directory exactly as ``server/`` and ``clients/`` write it
(``run.json``, ``state.json``, ``global/round-NNN.safetensors`` + ``latest``,
``private/partition-<i>-of-<n>.safetensors``) from tiny random models saved to disk, so the
exporter rebuilds the model from the recorded settings by path as it does for real runs.
The expected Z is computed independently: a model assembled by hand from the same files.
The slow test exports a client of a real ``lopa-fed simulate`` run.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from export_testing import perturb, run_cli, run_cli_quiet, save_tiny_models

from export.errors import ExportError
from export.federated import load_client
from export.parity import torch_prompts
from export.pipeline import export_run
from export.runtime import ExportFormatError, PromptRuntime
from lopa_fed.checkpoint import load_tensors, save_tensors
from lopa_fed.config import LoPAConfig
from lopa_fed.errors import CheckpointError, ConfigError, LoPAError
from lopa_fed.model import PromptedModel, build_model
from lopa_fed.tasks import get_task

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no model hub on this machine

TAG = "5f0c6a1e9b2d4c7e8a3b1d0e2f4a6c8b"
LOPA = {"method": "lopa", "m": 3, "r": 2, "hidden": 8}


def _settings(enc_dir: str, frz_dir: str, rounds: int = 2) -> dict:
    """A run config as run.json records it (hyphenated keys; the fields export needs and a few it ignores)."""
    return {
        "task": "sst2", **LOPA, "zs-init": "normal", "model": frz_dir, "encoder": enc_dir, "federate": "zs",
        "num-server-rounds": rounds, "local-steps": 2, "max-length": 64, "seed": 9876, "strategy": "fedavg",
        "output-dir": "", "private-dir": "", "data-dir": "",
    }


def _model(enc_dir: str, frz_dir: str, seed: int) -> PromptedModel:
    pm = build_model(get_task("sst2"), LoPAConfig(**LOPA), model=frz_dir, encoder=enc_dir, seed=seed)
    perturb(pm, seed)
    return pm.eval()


def write_run(root: Path, enc_dir: str, frz_dir: str, num_partitions: int = 2, rounds: int = 2) -> Path:
    """A finished federated run directory, laid out as ``server/loop.py`` and ``clients/state.py`` write it."""
    run = root / "fed"
    glob = _model(enc_dir, frz_dir, seed=100)
    names = glob.shared_names()
    for rnd in range(rounds + 1):
        tensors = _model(enc_dir, frz_dir, seed=100 + rnd).state(names)  # round `rounds` is the last
        meta = {"round": str(rnd), "state-tag": TAG, "format": "lopa-fed-global/1"}
        save_tensors(run / "global" / f"round-{rnd:03d}.safetensors", tensors, meta)
    shutil.copy(run / "global" / f"round-{rounds:03d}.safetensors", run / "global" / "latest.safetensors")
    for i in range(num_partitions):
        client = _model(enc_dir, frz_dir, seed=200 + i)
        meta = {"format": "lopa-fed-private/1", "state-tag": TAG, "round": str(rounds),
                "partition": f"{i}/{num_partitions}", "fingerprint": "sst2|lopa|3|2|8"}
        save_tensors(run / "private" / f"partition-{i}-of-{num_partitions}.safetensors",
                     client.state(client.private_names()), meta)
    info = {
        "settings": _settings(enc_dir, frz_dir, rounds), "output_dir": str(run), "private_dir": str(run / "private"),
        "data_dir": "", "federated": names, "roles": glob.roles(), "strategy": "FedAvg", "state-tag": TAG,
        "status": "completed",
    }
    (run / "run.json").write_text(json.dumps(info, indent=2))
    (run / "state.json").write_text(json.dumps({"state-tag": TAG, "last-round": rounds, "output_dir": str(run)}))
    return run


def expected_model(run: Path, partition: int, enc_dir: str, frz_dir: str) -> PromptedModel:
    """Client ``partition``'s model assembled by hand: the last round's global tensors + its private file."""
    pm = _model(enc_dir, frz_dir, seed=999)  # every tensor is overwritten below
    n = len(list((run / "private").glob("partition-*")))
    tensors = {**load_tensors(run / "global" / "latest.safetensors"),
               **load_tensors(run / "private" / f"partition-{partition}-of-{n}.safetensors")}
    pm.load_state(tensors, strict_keys=True)
    return pm.eval()


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    return save_tiny_models(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture(scope="module")
def fed_run(tiny_dirs, tmp_path_factory):
    return write_run(tmp_path_factory.mktemp("runs"), *tiny_dirs)


def _texts(n: int = 12) -> list:
    task = get_task("sst2")
    return [task.plain_text(ex) for ex in task.read("dev", limit=n)]


def _copy_run(run: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "fed-copy"
    shutil.copytree(run, dst)
    info = json.loads((dst / "run.json").read_text())
    info["private_dir"] = str(dst / "private")
    (dst / "run.json").write_text(json.dumps(info))
    return dst


# ---------------------------------------------------------------------------- the personalised export
def test_export_run_is_the_clients_personalised_generator(fed_run, tiny_dirs, tmp_path):
    meta = export_run(fed_run, 1, tmp_path / "c1", agreement_examples=24)
    src = meta["source"]
    assert (src["partition"], src["num_partitions"], src["round"], src["state_tag"]) == (1, 2, 2, TAG)
    assert src["global"].endswith("global/latest.safetensors") and src["private"].endswith("partition-1-of-2.safetensors")
    assert meta["task"] == "sst2" and meta["frozen_max_length"] == 64 and meta["m"] == 3 and meta["d"] == 16
    assert meta["parity"]["fp32"]["passed"] and meta["parity"]["predictions"]["fp32"]["agreement"] == 1.0
    texts = _texts()
    z = PromptRuntime(tmp_path / "c1").prompts(texts)
    mine = torch_prompts(expected_model(fed_run, 1, *tiny_dirs), texts)
    other = torch_prompts(expected_model(fed_run, 0, *tiny_dirs), texts)
    np.testing.assert_allclose(z, mine, atol=1e-4, rtol=0)
    assert np.abs(mine - other).max() > 1e-3  # client 0's heads give another prompt: it is personalised
    # the shared Zs is the last round's global one, not an earlier round's
    got = load_client(fed_run, 1).model.state(["prompt.zs"])["prompt.zs"]
    torch.testing.assert_close(got, load_tensors(fed_run / "global" / "round-002.safetensors")["prompt.zs"])


def test_cli_export_run(fed_run, tiny_dirs, tmp_path, capsys):
    out = tmp_path / "c0"
    code, stdout = run_cli_quiet(["export", "--run", str(fed_run), "--partition", "0", "--out", str(out),
                                  "--agreement-examples", "8"])
    assert code == 0 and "fp32 parity" in stdout
    texts = _texts(6)
    np.testing.assert_allclose(PromptRuntime(out).prompts(texts),
                               torch_prompts(expected_model(fed_run, 0, *tiny_dirs), texts), atol=1e-4)
    assert run_cli(["export", "--run", str(fed_run), "--partition", "0", "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err


def test_latest_missing_uses_highest_round(fed_run, tmp_path):
    run = _copy_run(fed_run, tmp_path)
    (run / "global" / "latest.safetensors").unlink()
    client = load_client(run, 0)
    assert client.source["round"] == 2 and client.source["global"].endswith("round-002.safetensors")


# ---------------------------------------------------------------------------- refusals with clear messages
def test_partition_out_of_range(fed_run):
    with pytest.raises(ConfigError, match=r"--partition 3 is out of range: .* has 2 partitions \(0 to 1\)"):
        load_client(fed_run, 3)
    with pytest.raises(ConfigError, match="partition id >= 0"):
        load_client(fed_run, -1)


def test_missing_partition_file(fed_run, tmp_path):
    run = _copy_run(fed_run, tmp_path)
    (run / "private" / "partition-1-of-2.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"partition-1-of-2.safetensors is missing: client 1 never saved"):
        load_client(run, 1)
    shutil.rmtree(run / "private")
    with pytest.raises(CheckpointError, match=r"partition-0-of-N.safetensors is missing"):
        load_client(run, 0)


@pytest.mark.parametrize(
    ("edit", "pattern"),
    [
        ({"status": "running"}, r"is not finished \(run.json status 'running'"),
        ({"settings_rounds": 5}, r"is not finished .*last completed round 2 of 5"),
    ],
)
def test_unfinished_run(fed_run, tmp_path, edit, pattern):
    run = _copy_run(fed_run, tmp_path)
    info = json.loads((run / "run.json").read_text())
    if "status" in edit:
        info["status"] = edit["status"]
    else:
        info["settings"]["num-server-rounds"] = edit["settings_rounds"]
    (run / "run.json").write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match=pattern):
        load_client(run, 0)


def test_bad_run_files(fed_run, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_client(tmp_path / "nowhere", 0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="run.json is missing: .* is not a federated run directory"):
        load_client(tmp_path / "empty", 0)
    run = _copy_run(fed_run, tmp_path)
    (run / "state.json").unlink()
    with pytest.raises(CheckpointError, match="state.json is missing: the run never completed a round"):
        load_client(run, 0)
    (run / "run.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="run.json is not valid JSON"):
        load_client(run, 0)


def test_private_state_of_another_run(fed_run, tiny_dirs, tmp_path):
    run = _copy_run(fed_run, tmp_path)
    path = run / "private" / "partition-0-of-2.safetensors"
    save_tensors(path, load_tensors(path), {"state-tag": "someotherrun", "format": "lopa-fed-private/1"})
    with pytest.raises(CheckpointError, match="belongs to another run"):
        load_client(run, 0)
    bad = {k: v for k, v in list(load_tensors(run / "private" / "partition-1-of-2.safetensors").items())[1:]}
    save_tensors(run / "private" / "partition-1-of-2.safetensors", bad, {"state-tag": TAG})
    with pytest.raises(CheckpointError, match="but the client's private tensors are"):
        load_client(run, 1)


def test_settings_that_do_not_match_the_tensors(fed_run, tmp_path):
    run = _copy_run(fed_run, tmp_path)
    info = json.loads((run / "run.json").read_text())
    info["settings"]["m"] = 5  # Zs would be 5×d, the files hold 3×d
    del info["roles"]
    (run / "run.json").write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match="do not fit the model rebuilt from run.json"):
        load_client(run, 0)
    info["settings"]["method"] = "head"
    (run / "run.json").write_text(json.dumps(info))
    with pytest.raises(ExportError, match="'head', which has no prompt generator"):
        load_client(run, 0)


# ---------------------------------------------------------------------------- CLI refusals (one line, exit 2)
@pytest.mark.parametrize(
    ("argv", "pattern"),
    [
        (["export", "--run", "R", "--out", "O"], "--run needs --partition"),
        (["export", "--checkpoint", "C", "--partition", "1", "--out", "O"], "--partition selects a client"),
        (["export", "--run", "R", "--partition", "1", "--client-state", "S", "--out", "O"], "--client-state goes with"),
        (["export", "--run", "R", "--partition", "1", "--task", "rte", "--out", "O"], "--task goes with --checkpoint"),
        (["export", "--checkpoint", "C", "--out", "O", "--opset", "3"], r"--opset must be an integer from 18 .* got 3"),
        (["export", "--checkpoint", "C", "--out", "O", "--opset", "99"], r"--opset must be an integer from 18 .* got 99"),
        (["export", "--checkpoint", "C", "--out", "O", "--parity-examples", "0"], "--parity-examples must be >= 1"),
        (["infer", "--prompt-dir", "P", "--text", ""], "--text number 1 is empty"),
        (["infer", "--prompt-dir", "P", "--text", "ok", "--text", "  "], "--text number 2 is empty"),
        (["infer", "--prompt-dir", "P", "--text", "ok", "--batch-size", "-1"], "--batch-size must be >= 1, got -1"),
        (["infer", "--prompt-dir", "P", "--text", "ok", "--threads", "0"], "--threads must be >= 1, got 0"),
        (["infer", "--prompt-dir", "P", "--dev", "0"], "--dev must be >= 1, got 0"),
    ],
)
def test_cli_refusals(argv, pattern, capsys):
    """Each bad value raises a ConfigError from the registered handler, printed as one line with exit 2."""
    import argparse

    from export import cli

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    with pytest.raises(ConfigError, match=pattern):
        args.func(args)
    assert run_cli(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("lopa-fed: error: ") and "Traceback" not in err


def test_cli_source_is_required(capsys):
    assert run_cli(["export", "--out", "O"]) == 2  # argparse: one of --checkpoint / --run
    assert "one of the arguments --checkpoint --run is required" in capsys.readouterr().err


def test_export_errors_are_lopa_errors():
    assert issubclass(ExportError, LoPAError) and issubclass(ExportFormatError, LoPAError)
    assert issubclass(ExportFormatError, ValueError)


def test_lopa_fed_main_prints_export_errors(capsys):
    """Through the real ``lopa-fed`` entry point, once the ``export`` entry point is installed."""
    import importlib.metadata

    from lopa_fed.cli import COMMAND_GROUP, main

    if "export" not in {ep.name for ep in importlib.metadata.entry_points(group=COMMAND_GROUP)}:
        pytest.skip("the export entry point is not installed: run `.venv/bin/pip install --no-deps -e .`")
    assert main(["infer", "--prompt-dir", "P", "--text", ""]) == 2
    assert capsys.readouterr().err == "lopa-fed: error: --text number 1 is empty; give the text to classify\n"


def test_opset_is_recorded_as_written(fed_run, tmp_path):
    """``--opset 20`` writes and records opset 20 (issue 14: 3 was accepted and recorded for an opset-18 file)."""
    import onnx

    from export.onnx_export import written_opset

    meta = export_run(fed_run, 0, tmp_path / "o20", opset=20, agreement_examples=4, parity_examples=4)
    assert meta["onnx"]["opset"] == 20
    assert written_opset(onnx.load(str(tmp_path / "o20" / "prompt_generator.onnx"))) == 20
    with pytest.raises(ConfigError, match="--opset must be"):
        export_run(fed_run, 0, tmp_path / "o3", opset=3)
    assert not (tmp_path / "o3").exists()


# ---------------------------------------------------------------------------- a real federated run
@pytest.mark.slow
@pytest.mark.integration
def test_export_client_of_a_real_simulation(tmp_path):
    """Export client 1 of a real ``lopa-fed simulate`` run (MiniLM, SST-2, 2 clients, 1 round).

    ``LOPA_FED_TEST_RUN`` may name an existing finished run with 2 clients to skip the simulation.
    """
    run = Path(os.environ.get("LOPA_FED_TEST_RUN", "") or tmp_path / "fed")
    if not (run / "run.json").is_file():
        from lopa_fed.cli import build_parser, main

        if "simulate" not in build_parser().format_help():
            pytest.skip("the simulate command is not installed (`.venv/bin/pip install --no-deps -e .`)")
        data = Path(__file__).resolve().parents[3] / "shared" / "data"
        argv = ["simulate", "--task", "sst2", "--num-clients", "2", "--rounds", "1", "--local-steps", "2",
                "--out", str(run)] + (["--data-dir", str(data)] if data.is_dir() else [])
        assert main(argv) == 0
    meta = export_run(run, 1, tmp_path / "c1", agreement_examples=64, parity_examples=32)
    assert meta["parity"]["fp32"]["passed"] and meta["parity"]["predictions"]["fp32"]["disagreements_beyond_ties"] == 0
    # independent rebuild: default MiniLM LoPA + the run's files, loaded by hand
    task = get_task("sst2")
    pm = build_model(task, LoPAConfig("lopa", m=10, r=4, hidden=256))
    pm.load_state({**load_tensors(run / "global" / "latest.safetensors"),
                   **load_tensors(run / "private" / "partition-1-of-2.safetensors")}, strict_keys=True)
    texts = [task.plain_text(ex) for ex in task.read("dev", limit=16)]
    np.testing.assert_allclose(PromptRuntime(tmp_path / "c1").prompts(texts), torch_prompts(pm.eval(), texts), atol=1e-4)
