"""Tests for :mod:`lopa_fed.codegen.scoring` and :mod:`.prompting`: code-task data, answer-token training, pass@1."""

from __future__ import annotations

import pytest
import torch

from lopa_fed.backbone import FrozenModel
from lopa_fed.codegen import scoring as code_eval
from lopa_fed.codegen.prompting import chat_prompt, encode_code_examples, encode_prompt
from lopa_fed.codegen.scoring import default_generation, evaluate_loss, evaluate_pass_at_1
from lopa_fed.config import LoPAConfig, TrainConfig
from lopa_fed.data import load_splits
from lopa_fed.model import PromptedModel
from lopa_fed.tasks import get_task as get_code_task
from lopa_fed.train import fit

from conftest import tiny_llama

CRUX_O, CRUX_I, MBPP = (get_code_task(n) for n in ("cruxeval-o", "cruxeval-i", "mbpp"))


@pytest.fixture(autouse=True)
def _no_env_override(monkeypatch):
    monkeypatch.delenv("LOPA_FED_DATA_DIR", raising=False)


@pytest.fixture(scope="module")
def smol():
    return FrozenModel.load("smollm2")


@pytest.fixture(scope="module")
def crux_o_train():
    return CRUX_O.split(CRUX_O.read_all())[0]


@pytest.fixture()
def tiny_causal(tok):
    """Tiny random Llama over MiniLM's vocabulary (its tokenizer has no chat template and no eos)."""
    frozen = FrozenModel(tiny_llama(seed=11, hidden=32), tok, "causal", "tiny-llama")
    saved = tok.eos_token
    tok.eos_token = tok.sep_token  # encode_answer_only needs an eos; [SEP] plays that role here
    yield frozen
    tok.eos_token = saved  # the tokenizer fixture is shared by the whole session


@pytest.fixture()
def short_encoder(tiny_encoder):
    """The tiny encoder (128 positions) reading at most 128 tokens of the long code prompts."""
    tiny_encoder.max_length = 128
    return tiny_encoder


# ------------------------------------------------------------------------------------ datasets
@pytest.mark.parametrize("name", ["cruxeval-o", "cruxeval-i", "mbpp"])
def test_encode_real_rows_masks_the_prompt(smol, name):
    task = get_code_task(name)
    examples = task.read_all()[:3]
    data = encode_code_examples(examples, smol, max_length=512)
    tok = smol.tokenizer
    for ex, item in zip(examples, data.items):
        prompt_ids = encode_prompt(tok, chat_prompt(tok, ex.prompt))
        n = len(prompt_ids)
        assert item.uid == ex.uid and item.enc_text == (ex.prompt, None)  # encoder: raw prompt only
        assert list(item.input_ids[:n]) == prompt_ids
        assert list(item.lm_labels[:n]) == [-100] * n
        assert list(item.lm_labels[n:]) == list(item.input_ids[n:])
        assert tok.decode(item.input_ids[n:]) == ex.target + tok.eos_token
        assert tok.decode(prompt_ids).endswith("<|im_start|>assistant\n")
    batch = data.collate(data.items)
    assert "labels" not in batch and batch["lm_labels"].shape == batch["input_ids"].shape
    assert int((batch["lm_labels"] != -100).sum()) == sum(
        sum(v != -100 for v in it.lm_labels) for it in data.items
    )


def test_encode_prompt_truncates_from_the_left(smol):
    tok = smol.tokenizer
    text = chat_prompt(tok, MBPP.read_all()[0].prompt)
    full = encode_prompt(tok, text, 4096)
    assert encode_prompt(tok, text, 20) == full[-20:]
    with pytest.raises(ValueError):
        encode_prompt(tok, text, 0)


def test_code_splits_and_subsets(smol):
    s = load_splits(CRUX_I, smol, train_limit=12, test_limit=5)
    full_train, full_test = CRUX_I.split(CRUX_I.read_all())
    assert len(s.val) == 0  # code tasks hold nothing out by default
    assert len(s.train) == len(s.train.examples) == 12 and len(s.test) == len(s.test.examples) == 5
    assert [e.uid for e in s.test.examples] == [e.uid for e in full_test[:5]]
    assert {e.uid for e in s.train.examples} <= {e.uid for e in full_train}
    assert [it.uid for it in s.train.items] == [e.uid for e in s.train.examples]
    again = load_splits(CRUX_I, smol, train_limit=12, test_limit=5)
    assert [e.uid for e in again.train.examples] == [e.uid for e in s.train.examples]
    data = s.train.subset([0, 3, 5])
    assert (
        [it.uid for it in data.items] == [e.uid for e in data.examples] == [s.train.examples[i].uid for i in (0, 3, 5)]
    )
    assert s.train.task is CRUX_I and data.task is CRUX_I


def test_encode_rejects_non_causal_and_overlong_answers(tiny_frozen, tiny_causal, crux_o_train):
    with pytest.raises(ValueError, match="causal"):
        encode_code_examples(crux_o_train[:1], tiny_frozen)
    with pytest.raises(ValueError, match=r"cruxeval/sample_\d+: .*max_length"):
        encode_code_examples(crux_o_train[:1], tiny_causal, max_length=1)


# ------------------------------------------------------------------------------------ training
def _train_and_compare(
    frozen, examples, config, encoder=None, steps=6, lr=1e-3, max_length=256, batch_size=4
):
    torch.manual_seed(0)
    model = PromptedModel(frozen, config, num_labels=0, encoder=encoder)
    data = encode_code_examples(examples, frozen, max_length)
    before = evaluate_loss(model, data)["loss"]
    cfg = TrainConfig(lr=lr, epochs=50, max_steps=steps, batch_size=batch_size, warmup_ratio=0.0)
    res = fit(model, data, cfg)
    after = evaluate_loss(model, data)["loss"]
    return before, after, res


def test_tiny_training_lowers_answer_loss_fast(tiny_causal, short_encoder, crux_o_train):
    with torch.no_grad():  # a random model with larger weights, so its output depends on the prefix
        for p in tiny_causal.model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.3, generator=torch.Generator().manual_seed(p.numel()))
    cfg = LoPAConfig(method="lopa", m=4, r=1, hidden=16)
    before, after, res = _train_and_compare(
        tiny_causal, crux_o_train[:8], cfg, short_encoder, steps=6, lr=0.3, max_length=96, batch_size=8
    )
    assert res["steps"] == 6 and after < before - 0.1, (before, after, res["losses"])


@pytest.mark.slow
@pytest.mark.parametrize("method", ["pt", "lopa"])
def test_smollm2_training_on_8_cruxeval_o_lowers_answer_loss(smol, crux_o_train, method):
    from lopa_fed.encoder import InstanceEncoder

    enc = InstanceEncoder.load("default") if method == "lopa" else None
    cfg = LoPAConfig(method=method, m=10, r=1, hidden=enc.hidden_size if enc else 256)
    before, after, res = _train_and_compare(
        smol, crux_o_train[:8], cfg, enc, steps=6, lr=1e-3, max_length=512
    )
    assert after < before, (before, after, res["losses"])


def test_evaluate_loss_matches_manual(tiny_causal, crux_o_train):
    model = PromptedModel(tiny_causal, LoPAConfig(method="pt", m=3), num_labels=0).eval()
    data = encode_code_examples(crux_o_train[:3], tiny_causal, 256)
    res = evaluate_loss(model, data, batch_size=2)
    per = [evaluate_loss(model, data.subset([i])) for i in range(3)]
    manual = sum(p["loss"] * p["answer_tokens"] for p in per) / sum(p["answer_tokens"] for p in per)
    assert res["answer_tokens"] == sum(p["answer_tokens"] for p in per) and res["num_examples"] == 3
    assert res["loss"] == pytest.approx(manual, rel=1e-5)


# ------------------------------------------------------------------------------------ pass@1
def test_pass_at_1_with_oracle_and_wrong_generations(monkeypatch, tiny_causal, short_encoder):
    examples = CRUX_O.read_all()[:4]
    seen: list[tuple] = []

    def fake_generate(frozen, input_ids, z, config, generator=None):
        seen.append((len(input_ids), None if z is None else tuple(z.shape), config.stop))
        outs = []
        for ids in input_ids:
            ex = by_ids[tuple(ids)]
            # two right (one wrapped in prose), two wrong
            if ex is examples[0]:
                outs.append(ex.target)
            elif ex is examples[1]:
                outs.append(f"The function returns `{ex.target}`.")
            elif ex is examples[2]:
                outs.append("None")
            else:
                outs.append("I don't know")
        return outs

    tk = tiny_causal.tokenizer
    by_ids = {tuple(encode_prompt(tk, chat_prompt(tk, e.prompt))): e for e in examples}
    assert len(by_ids) == 4
    monkeypatch.setattr(code_eval, "generate", fake_generate)
    model = PromptedModel(
        tiny_causal, LoPAConfig(method="lopa", m=3, r=1, hidden=8), num_labels=0, encoder=short_encoder
    )
    res = evaluate_pass_at_1(model, CRUX_O, examples + examples[:0], batch_size=3, workers=2)
    assert res["pass_at_1"] == pytest.approx(0.5) and res["num_problems"] == 4
    assert res["status_counts"] == {"pass": 2, "fail": 1, "timeout": 0, "error": 1}
    assert [r["uid"] for r in res["records"]] == [e.uid for e in examples]  # input order kept
    assert [r["status"] for r in res["records"]] == ["pass", "pass", "fail", "error"]
    assert res["records"][1]["completion"] == examples[1].target.strip()
    assert set(res["records"][0]) == {"uid", "completion", "generation", "status", "reason", "seconds"}
    assert [s[0] for s in seen] == [3, 1] and seen[0][1] == (3, 3, tiny_causal.d)
    assert "<|im_end|>" in seen[0][2]  # the task's stop sequences are always used
    # no tuning: a bare frozen model gets no prefix; limit keeps the first problems
    seen.clear()
    res = evaluate_pass_at_1(tiny_causal, CRUX_O, examples, limit=2, workers=1)
    assert res["num_problems"] == 2 and res["pass_at_1"] == 1.0 and seen[0][1] is None


def test_pass_at_1_end_to_end_tiny_model(tiny_causal):
    examples = MBPP.read_all()[:2]
    res = evaluate_pass_at_1(
        tiny_causal, MBPP, examples, generation=default_generation(MBPP, max_new_tokens=5), workers=2
    )
    assert res["num_problems"] == 2 and res["pass_at_1"] == 0.0  # random weights: nonsense code
    assert all(r["status"] in ("fail", "error") for r in res["records"])
    assert res["generation"]["max_new_tokens"] == 5 and "\nassert " in res["generation"]["stop"]


def test_default_generation():
    g = default_generation(MBPP)
    assert g.max_new_tokens == 256 and not g.do_sample and "\nassert " in g.stop
    g = default_generation(CRUX_I, do_sample=True, temperature=0.2, top_p=0.95)
    assert g.max_new_tokens == 64 and g.do_sample and g.top_p == 0.95
