"""Integration: the real packaged MiniLM and SmolLM2 on slices of the real GLUE data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from lopa_fed import weights
from lopa_fed.backbone import FrozenModel
from lopa_fed.config import LoPAConfig, TrainConfig
from lopa_fed.data import encode_examples, load_splits
from lopa_fed.model import build_model
from lopa_fed.tasks import get_task
from lopa_fed.train import evaluate, fit

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]


def test_minilm_lopa_learns_sst2():
    """A short LoPA run on an SST-2 slice lowers the loss and beats the majority class on dev."""
    task = get_task("sst2")
    model = build_model(task, LoPAConfig(method="lopa"), seed=0)
    assert model.frozen.identity == "sentence-transformers/all-MiniLM-L6-v2"
    assert model.frozen.d == 384 and model.encoder.hidden_size == 384
    splits = load_splits(task, model.frozen, train_limit=320, test_limit=200, seed=1)
    res = fit(model, splits.train, TrainConfig(lr=2e-3, epochs=2, batch_size=16))
    assert res["loss"] < res["first_loss"] - 0.05
    dev = evaluate(model, splits.test)
    majority = max(Counter(splits.test.labels).values()) / len(splits.test)
    assert dev["accuracy"] > majority + 0.1, (dev, majority)
    # the frozen model and encoder were loaded once for this process
    assert all(n == 1 for n in weights.LOAD_COUNTS.values())


def test_smollm2_gguf_causal_forward_backward_with_prefix():
    """The packaged SmolLM2 GGUF loads as a causal LM (d=576) and trains a prefix through the verbalizer."""
    frozen = FrozenModel.load("smollm2")
    assert frozen.kind == "causal" and frozen.d == 576
    assert not any(p.requires_grad for p in frozen.model.parameters())
    task = get_task("sst2")
    torch.manual_seed(0)
    from lopa_fed.model import PromptedModel

    model = PromptedModel(frozen, LoPAConfig(method="pt", m=4), num_labels=2, label_words=task.label_words)
    data = encode_examples(task.read("dev", limit=4), task, frozen, 64)
    batch = data.collate(data.items)
    out = model(batch)
    assert out.logits.shape == (4, 2) and torch.isfinite(out.loss)
    out.loss.backward()
    assert model.prompt.zs.grad is not None and model.prompt.zs.grad.abs().sum() > 0
    assert all(p.grad is None for p in frozen.model.parameters())
    # unprompted, the real model already prefers sensible label words more often than not
    with torch.no_grad():
        z0 = model.frozen(None, batch["input_ids"], batch["attention_mask"], label_ids=model.label_ids).logits
    assert z0.shape == (4, 2)


def test_cli_train_writes_metrics_and_checkpoint(tmp_path):
    out = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "lopa_fed.cli", "train", "--task", "sst2", "--method", "pt", "--lr", "1e-2",
        "--max-steps", "6", "--train-limit", "96", "--test-limit", "64", "--no-progress", "--out", str(out),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    subprocess.run(cmd, check=True, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    m = json.loads((out / "metrics.json").read_text())
    for key in ("task", "method", "model", "trainable_params", "train_seconds", "examples_per_second", "dev"):
        assert key in m
    assert m["task"] == "sst2" and m["method"] == "pt" and m["trainable_params"] == 10 * 384 + 384 * 2 + 2
    assert 0.0 <= m["dev"]["accuracy"] <= 1.0 and m["dev"]["num_examples"] == 64
    assert (out / "checkpoint" / "shared.safetensors").is_file()
    again = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert again.returncode == 2 and "--force" in again.stderr and again.stderr.count("\n") == 1
    ev = subprocess.run(
        [sys.executable, "-m", "lopa_fed.cli", "evaluate", "--checkpoint", str(out), "--limit", "64", "--json"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600, check=True,
    )
    assert json.loads(ev.stdout.strip().splitlines()[-1])["accuracy"] == pytest.approx(m["dev"]["accuracy"])


@pytest.mark.parametrize(
    "args,needle",
    [
        (["train", "--task", "nope", "--out", "x"], "unknown task 'nope'"),
        (["train", "--task", "sst2", "--data-dir", "/does/not/exist", "--out", "x"], "/does/not/exist"),
        (["train", "--task", "sst2", "--m", "0", "--out", "x"], "m must be a positive integer"),
        (["train", "--task", "sst2", "--model", "/no/such/model.gguf", "--out", "x"], "GGUF file not found"),
    ],
)
def test_cli_errors_are_clear(tmp_path, args, needle):
    r = subprocess.run(
        [sys.executable, "-m", "lopa_fed.cli", *args], cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr and "Traceback" not in r.stderr
    assert [ln for ln in r.stderr.splitlines() if ln.startswith("lopa-fed: error:")] == r.stderr.splitlines()[-1:]
