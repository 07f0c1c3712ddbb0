"""``lopa-fed train`` / ``evaluate``: option resolution from the task's defaults, and the code-task path."""

from __future__ import annotations

import json

import pytest
import torch

from lopa_fed import cli
from lopa_fed.backbone import FrozenModel
from lopa_fed.commands.options import resolve
from lopa_fed.config import ConfigError
from lopa_fed.model import PromptedModel

from conftest import tiny_llama


def _resolve(*argv: str):
    return resolve(cli.build_parser().parse_args(["train", *argv, "--out", "x"]))


def test_unset_options_become_the_papers_code_defaults():
    got = _resolve("--task", "mbpp", "--method", "pt")
    assert (got.model, got.kind, got.lopa.r, got.train.epochs, got.train.max_length, got.train.lr) == (
        "smollm2", "causal", 1, 5, 512, 1e-3,
    )
    assert got.val_fraction == 0.0
    assert _resolve("--task", "mbpp", "--method", "lora").train.lr == 1e-4
    assert _resolve("--task", "mbpp", "--method", "lopa-add").train.lr == 1e-3
    assert _resolve("--task", "mbpp", "--method", "lopa").lopa.hidden == 384  # h' = the encoder's width h
    # explicit values are kept, including the GLUE defaults (an explicit --r 4 is not "unset")
    got = _resolve("--task", "mbpp", "--r", "4", "--hidden", "256", "--epochs", "20", "--max-length", "256")
    assert (got.lopa.r, got.lopa.hidden, got.train.epochs, got.train.max_length) == (4, 256, 20, 256)
    got = _resolve("--task", "mbpp", "--model", "some/llm", "--kind", "causal", "--r", "2", "--hidden", "64",
                   "--epochs", "3", "--max-length", "300", "--lr", "5e-4")
    assert (got.model, got.kind, got.lopa.r, got.lopa.hidden, got.train.epochs, got.train.max_length,
            got.train.lr) == ("some/llm", "causal", 2, 64, 3, 300, 5e-4)
    with pytest.raises(ConfigError, match="causal"):
        _resolve("--task", "mbpp", "--kind", "mlm")
    with pytest.raises(ConfigError, match="head"):
        _resolve("--task", "mbpp", "--method", "head")


def test_code_task_width_follows_an_encoder_tier():
    """h' = the tier's width: MiniLM-L3 is 384 wide, the static tier as wide as SmolLM2 (576)."""
    assert _resolve("--task", "mbpp", "--method", "lopa", "--encoder", "minilm-l3").lopa.hidden == 384
    assert _resolve("--task", "mbpp", "--method", "lopa", "--encoder", "static").lopa.hidden == 576
    with pytest.raises(ConfigError, match="minilm-l1 to minilm-l5"):
        _resolve("--task", "mbpp", "--method", "lopa", "--encoder", "minilm-l9")


def test_glue_defaults_come_from_the_task():
    got = _resolve("--task", "sst2")
    assert (got.model, got.kind, got.lopa.r, got.lopa.hidden, got.train.epochs, got.train.max_length) == (
        "default", "auto", 4, 256, 20, 256,
    )
    assert got.val_fraction == 0.1 and got.lopa.zs_init == "auto"
    # measured learning rates by default, the paper's one flag away
    assert got.train.lr == 3e-3 and _resolve("--task", "sst2", "--method", "pt").train.lr == 1e-2
    paper = _resolve("--task", "sst2", "--paper-defaults")
    assert paper.train.lr == 1e-5 and paper.lopa.zs_init == "normal"
    assert _resolve("--task", "sst2", "--method", "pt", "--paper-defaults").train.lr == 1e-4
    assert _resolve("--task", "sst2", "--paper-defaults", "--lr", "0.5", "--zs-init", "vocab").train.lr == 0.5


@pytest.fixture()
def tiny_env(monkeypatch, tok, tiny_encoder):
    """Route model loading to a tiny random Llama + tiny encoder, so the CLI runs in seconds."""
    saved = tok.eos_token
    tok.eos_token = tok.sep_token  # encode_answer_only needs an eos
    frozen = FrozenModel(tiny_llama(seed=3), tok, "causal", "tiny-llama")
    tiny_encoder.max_length = 128
    calls: list[dict] = []

    def fake_build_model(task, config, model="default", encoder="default", kind="auto", seed=None):
        calls.append(
            {"task": task.name, "method": config.method, "model": model, "kind": kind, "r": config.r}
        )
        if seed is not None:
            torch.manual_seed(seed)
        enc = tiny_encoder if config.has_generator and config.method != "pt" else None
        return PromptedModel(frozen, config, num_labels=0, encoder=enc)

    import lopa_fed.encoder
    import lopa_fed.model

    monkeypatch.setattr(lopa_fed.model, "build_model", fake_build_model)
    monkeypatch.setattr(
        lopa_fed.encoder.InstanceEncoder, "load", classmethod(lambda cls, name="default": tiny_encoder)
    )
    import lopa_fed.weights

    monkeypatch.setattr(lopa_fed.weights, "name_for_identity", lambda identity: identity)
    yield calls
    tok.eos_token = saved  # the tokenizer fixture is shared by the whole session


def test_cli_train_and_evaluate_code_task_fast(tiny_env, tmp_path, capsys):
    out = tmp_path / "run"
    argv = [
        "train",
        "--task",
        "cruxeval-o",
        "--out",
        str(out),
        "--train-limit",
        "4",
        "--test-limit",
        "3",
        "--max-steps",
        "2",
        "--batch-size",
        "2",
        "--no-progress",
    ]
    assert cli.main(argv) == 0
    assert tiny_env[0] == {
        "task": "cruxeval-o",
        "method": "lopa",
        "model": "smollm2",
        "kind": "causal",
        "r": 1,
    }
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "cruxeval-o" and metrics["method"] == "lopa"
    assert metrics["train"]["steps"] == 2 and metrics["train"]["lr"] == 1e-3
    assert metrics["config"]["lopa"]["r"] == 1 and metrics["config"]["lopa"]["hidden"] == 24  # h' = h
    assert metrics["config"]["train"]["epochs"] == 5 and metrics["config"]["train"]["max_length"] == 512
    test = metrics["dev"]  # the dev split of a code task is the test half of its 50/50 split
    assert test["num_problems"] == 3 and 0.0 <= test["pass_at_1"] <= 1.0 and test["loss"] > 0
    assert sum(test["status_counts"].values()) == 3
    for key in (
        "trainable_params",
        "train_seconds",
        "examples_per_second",
        "eval_seconds",
        "git_commit",
        "command",
    ):
        assert key in metrics
    records = [json.loads(line) for line in (out / "test_results.jsonl").read_text().splitlines()]
    assert len(records) == 3 and {"uid", "completion", "status", "reason"} <= set(records[0])
    cfg = json.loads((out / "checkpoint" / "config.json").read_text())
    assert cfg["task"] == "cruxeval-o" and cfg["generation"]["max_new_tokens"] == 64
    # refuses to overwrite without --force: one line on stderr
    capsys.readouterr()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"lopa-fed: error: {out} already holds a run (metrics.json, checkpoint); pass --force to overwrite it"]

    assert cli.main(["evaluate", "--checkpoint", str(out), "--limit", "2", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["task"] == "cruxeval-o" and summary["split"] == "test" and summary["num_problems"] == 2
    lines = (out / "eval_test.jsonl").read_text().splitlines()
    assert [json.loads(x)["uid"] for x in lines] == [r["uid"] for r in records[:2]]
    # the same checkpoint generates the same answers as at the end of training
    assert [json.loads(x)["completion"] for x in lines] == [r["completion"] for r in records[:2]]
    assert (
        cli.main(["evaluate", "--checkpoint", str(out / "checkpoint"), "--limit", "1", "--split", "train"])
        == 0
    )
    assert (out / "eval_train.jsonl").is_file()


@pytest.mark.slow
def test_cli_train_and_evaluate_real_smollm2(tmp_path, capsys):
    out = tmp_path / "run"
    argv = [
        "train",
        "--task",
        "mbpp",
        "--method",
        "pt",
        "--out",
        str(out),
        "--train-limit",
        "2",
        "--test-limit",
        "2",
        "--max-steps",
        "1",
        "--batch-size",
        "2",
        "--no-progress",
    ]
    assert cli.main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert (
        metrics["model"].startswith("HuggingFaceTB/SmolLM2-135M-Instruct")
        and metrics["dev"]["num_problems"] == 2
    )
    assert metrics["trainable_params"] == 10 * 576
    capsys.readouterr()
    assert cli.main(["evaluate", "--checkpoint", str(out), "--limit", "1", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["num_problems"] == 1 and summary["method"] == "pt"
