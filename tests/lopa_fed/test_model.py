"""PromptedModel on tiny random frozen models: training, freezing, feature cache, checkpoints, kinds."""

from __future__ import annotations

import json

import pytest
import torch

from lopa_fed.backbone import FrozenModel
from lopa_fed.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from lopa_fed.config import LoPAConfig, TrainConfig
from lopa_fed.data import encode_examples
from lopa_fed.model import PromptedModel
from lopa_fed.tasks import Example, get_task
from lopa_fed.train import evaluate, fit

from conftest import tiny_bert, tiny_llama

SST2 = get_task("sst2")
RTE = get_task("rte")

POS = ["a great and moving film", "wonderful acting , a joy", "brilliant , funny and warm", "i loved every minute"]
NEG = ["a dull and tedious mess", "awful , boring script", "the worst film this year", "i hated every minute"]


def toy_examples(n_rep: int = 4) -> list[Example]:
    out = []
    for k in range(n_rep):
        out += [Example(f"{s} {k}", None, 1, f"p{k}{i}") for i, s in enumerate(POS)]
        out += [Example(f"{s} {k}", None, 0, f"n{k}{i}") for i, s in enumerate(NEG)]
    return out


def make(frozen, encoder, method="lopa", **kw):
    torch.manual_seed(0)
    kw = {"m": 4, "r": 2, "hidden": 16, **kw}
    cfg = LoPAConfig(method=method, **kw)
    enc = encoder if method not in ("pt", "head", "lora") else None
    words = SST2.label_words if frozen.kind != "classifier" else ()
    return PromptedModel(frozen, cfg, num_labels=2, label_words=words, encoder=enc)


def test_frozen_gets_no_grad_and_is_unchanged(tiny_frozen, tiny_encoder):
    model = make(tiny_frozen, tiny_encoder)
    before = {k: v.clone() for k, v in tiny_frozen.model.state_dict().items()}
    enc_before = {k: v.clone() for k, v in tiny_encoder.net.state_dict().items()}
    data = encode_examples(toy_examples(), SST2, tiny_frozen, 64)
    batch = data.collate(data.items[:8])
    model.train()
    model(batch).loss.backward()
    assert all(p.grad is None for p in tiny_frozen.model.parameters())
    assert all(p.grad is None for p in tiny_encoder.net.parameters())
    assert model.prompt.zs.grad is not None and model.prompt.u_head[1].weight.grad is not None
    fit(model, data, TrainConfig(lr=1e-2, epochs=2, batch_size=8))
    assert all(torch.equal(before[k], v) for k, v in tiny_frozen.model.state_dict().items())
    assert all(torch.equal(enc_before[k], v) for k, v in tiny_encoder.net.state_dict().items())
    assert not tiny_frozen.model.training


def test_training_lowers_loss_and_fits_toy_data(tiny_frozen, tiny_encoder):
    model = make(tiny_frozen, tiny_encoder)
    data = encode_examples(toy_examples(), SST2, tiny_frozen, 64)
    before = evaluate(model, data)["loss"]
    res = fit(model, data, TrainConfig(lr=3e-2, epochs=30, batch_size=8, warmup_ratio=0.0))
    after = evaluate(model, data)
    assert res["loss"] < res["first_loss"]
    assert after["loss"] < before - 0.1
    assert after["accuracy"] >= 0.9


def test_feature_cache_second_epoch_skips_encoder(tiny_frozen, tiny_encoder):
    model = make(tiny_frozen, tiny_encoder)
    data = encode_examples(toy_examples(), SST2, tiny_frozen, 64)
    fit(model, data, TrainConfig(lr=1e-3, epochs=1, batch_size=8))
    calls = tiny_encoder.forward_calls
    assert calls > 0 and tiny_encoder.cache_info()["size"] == len(data)
    fit(model, data, TrainConfig(lr=1e-3, epochs=2, batch_size=8))
    evaluate(model, data)
    assert tiny_encoder.forward_calls == calls


def test_feature_cache_is_bounded(tok):
    from lopa_fed.encoder import InstanceEncoder

    enc = InstanceEncoder(tiny_bert(hidden=24), tok, "tiny", cache_size=5)
    enc.encode([f"sentence {i}" for i in range(12)])
    assert enc.cache_info()["size"] == 5
    a = enc.encode(["sentence 11"])  # most recent: a hit
    assert enc.cache_info()["hits"] == 1
    enc.clear_cache()
    torch.testing.assert_close(enc.encode(["sentence 11"]), a)


def test_roles_cover_all_trainable(tiny_frozen, tiny_encoder):
    for method in ("lopa", "pt", "idpg", "head", "lora", "lopa-instance"):
        model = make(tiny_frozen, tiny_encoder, method=method)
        roles = model.roles()
        trainable = {n for n, p in model.named_trainable().items() if p.requires_grad}
        assert set(roles) == trainable and trainable
        assert set(model.shared_names()).isdisjoint(model.private_names())
        assert model.num_trainable() == sum(p.numel() for p in model.named_trainable().values())
    lora = make(tiny_frozen, tiny_encoder, method="lora")
    assert any(n.startswith("lora.") and "lora_A" in n for n in lora.shared_names())
    # LoRA trains a private copy: the shared frozen model is untouched by peft
    assert not any("lora" in n for n, _ in tiny_frozen.model.named_parameters())


def test_checkpoint_roundtrip_bit_exact(tmp_path, tiny_frozen, tiny_encoder):
    model = make(tiny_frozen, tiny_encoder)
    data = encode_examples(toy_examples(1), SST2, tiny_frozen, 64)
    fit(model, data, TrainConfig(lr=1e-2, epochs=1, batch_size=4))
    save_checkpoint(tmp_path / "ck", model, task="sst2")
    files = sorted(p.name for p in (tmp_path / "ck").iterdir())
    assert files == ["config.json", "private.safetensors", "shared.safetensors"]
    other = make(tiny_frozen, tiny_encoder)
    torch.manual_seed(123)
    for p in other.trainable_parameters():
        torch.nn.init.normal_(p)
    load_checkpoint(tmp_path / "ck", other)
    a, b = model.state(), other.state()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    from safetensors.torch import load_file

    assert set(load_file(tmp_path / "ck" / "shared.safetensors")) == set(model.shared_names())
    assert set(load_file(tmp_path / "ck" / "private.safetensors")) == set(model.private_names())


def test_checkpoint_refuses_mismatch_and_corruption(tmp_path, tiny_frozen, tiny_encoder):
    model = make(tiny_frozen, tiny_encoder)
    save_checkpoint(tmp_path / "ck", model)
    with pytest.raises(CheckpointError, match="does not match.*r"):
        load_checkpoint(tmp_path / "ck", make(tiny_frozen, tiny_encoder, r=3))
    with pytest.raises(CheckpointError, match="method"):
        load_checkpoint(tmp_path / "ck", make(tiny_frozen, tiny_encoder, method="pt"))
    (tmp_path / "ck" / "private.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="not a valid safetensors"):
        load_checkpoint(tmp_path / "ck", model)
    cfg = json.loads((tmp_path / "ck" / "config.json").read_text())
    cfg["format"] = "something-else"
    (tmp_path / "ck" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="unknown format"):
        load_checkpoint(tmp_path / "ck", model)
    with pytest.raises(CheckpointError, match="not a lopa-fed checkpoint"):
        load_checkpoint(tmp_path / "nothing", model)


def test_load_state_validates(tiny_frozen, tiny_encoder):
    model = make(tiny_frozen, tiny_encoder)
    with pytest.raises(KeyError, match="unknown parameter"):
        model.load_state({"prompt.nope": torch.zeros(1)})
    with pytest.raises(ValueError, match="shape"):
        model.load_state({"prompt.zs": torch.zeros(2, 2)})


def test_mlm_verbalizer_path(tok, tiny_encoder):
    frozen = FrozenModel(tiny_bert("mlm", seed=3), tok, "mlm", "tiny-bert-mlm")
    model = make(frozen, tiny_encoder)
    assert model.label_ids == tok.convert_tokens_to_ids(["terrible", "great"])
    data = encode_examples(toy_examples(1), SST2, frozen, 64)
    for it in data.items:
        assert it.input_ids[it.read_pos] == tok.mask_token_id
    batch = data.collate(data.items[:4])
    out = model(batch)
    assert out.logits.shape == (4, 2)
    # the logits are the MLM head's at <mask> (shifted by the m prefix tokens), restricted to the label words
    with torch.no_grad():
        z = model.prompts(batch["enc_texts"], 4)
        embeds, mask = frozen.build_inputs(z, batch["input_ids"], batch["attention_mask"])
        full = frozen.model(inputs_embeds=embeds, attention_mask=mask).logits
        ref = full[torch.arange(4), batch["read_pos"] + 4][:, model.label_ids]
    torch.testing.assert_close(out.logits, ref)
    out.loss.backward()
    assert model.prompt.zs.grad is not None


def test_causal_verbalizer_is_padding_invariant(tok, tiny_encoder):
    frozen = FrozenModel(tiny_llama(seed=4), tok, "causal", "tiny-llama")
    model = make(frozen, tiny_encoder).eval()
    ex = [Example("short one", None, 1, "a"), Example("a much longer sentence with many more words in it", None, 0, "b")]
    data = encode_examples(ex, SST2, frozen, 64)
    with torch.no_grad():
        both = model(data.collate(data.items)).logits
        alone = torch.cat([model(data.collate([it])).logits for it in data.items])
    torch.testing.assert_close(both, alone, rtol=1e-4, atol=1e-5)


def test_causal_answer_token_loss(tok, tiny_encoder):
    frozen = FrozenModel(tiny_llama(seed=5), tok, "causal", "tiny-llama")
    model = make(frozen, tiny_encoder)
    ids = torch.tensor([[101, 2000, 2001, 2002, 102]])
    labels = torch.tensor([[-100, -100, -100, 2002, 102]])
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "lm_labels": labels, "enc_texts": [("x", None)]}
    out = model(batch)
    # reference: loss only at answer positions, predicted from the previous position (after the m prefix)
    with torch.no_grad():
        logits = out.logits[0, 4:]
        ref = torch.nn.functional.cross_entropy(logits[2:4], ids[0, 3:5])
    torch.testing.assert_close(out.loss.detach(), ref)
    out.loss.backward()
    assert model.prompt.zs.grad is not None


def test_frozen_accepts_numpy_prompt(tiny_frozen, tiny_encoder):
    model = make(tiny_frozen, tiny_encoder).eval()
    data = encode_examples(toy_examples(1), SST2, tiny_frozen, 64)
    batch = data.collate(data.items[:3])
    with torch.no_grad():
        z = model.prompts(batch["enc_texts"], 3)
        a = model(batch).logits
        b = model(batch, z=z.numpy()).logits
    torch.testing.assert_close(a, b)


def test_pair_task_encoding(tiny_frozen):
    ex = RTE.read("dev", limit=3)
    data = encode_examples(ex, RTE, tiny_frozen, 32)
    assert all(len(it.input_ids) <= 32 for it in data.items)
    assert all(it.enc_text[1] for it in data.items)


@pytest.mark.parametrize("method", ["pt", "lopa", "lopa-add"])
def test_zs_init_vocab_takes_rows_of_the_embedding_table(tiny_frozen, tiny_encoder, method):
    torch.manual_seed(0)
    net = PromptedModel(tiny_frozen, LoPAConfig(method=method, m=6, r=2, hidden=8, zs_init="vocab"), 2,
                        encoder=tiny_encoder)
    table = tiny_frozen.embeddings.weight
    zs = net.prompt.zs.detach()
    assert zs.shape == (6, tiny_frozen.d)
    for row in zs:  # every row is exactly one token embedding
        assert torch.isclose(table, row).all(dim=1).any()
    normal = PromptedModel(tiny_frozen, LoPAConfig(method=method, m=6, r=2, hidden=8), 2, encoder=tiny_encoder)
    assert normal.prompt.zs.std() > 5 * zs.std()  # N(0, 1) vs token-embedding scale (std 0.02 here)
    with pytest.raises(Exception, match="zs_init"):
        LoPAConfig(zs_init="zeros")


def test_single_text_tokenised_the_same_in_a_mixed_batch(tiny_encoder):
    single = "a gorgeous, witty film"
    alone = tiny_encoder.tokenize([single])
    mixed = tiny_encoder.tokenize([("premise here", "hypothesis there"), single, (single, None)])
    n = int(alone["attention_mask"].sum())
    for row in (1, 2):
        assert mixed["input_ids"][row, :n].tolist() == alone["input_ids"][0, :n].tolist()
        assert int(mixed["attention_mask"][row].sum()) == n
    pair = tiny_encoder.tokenize([("premise here", "hypothesis there")])
    assert mixed["input_ids"][0, : pair["input_ids"].shape[1]].tolist() == pair["input_ids"][0].tolist()


def test_mlm_head_runs_at_the_read_position_only(tok):
    """The split path (body, then the head on B rows) equals the full B×L×V head."""
    frozen = FrozenModel(tiny_bert("mlm", seed=5), tok, "mlm", "tiny-bert-mlm")
    assert frozen.mlm_split() is not None
    ids = torch.randint(5, 100, (3, 9))
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[2, 6:] = 0
    pos = torch.tensor([1, 8, 3])
    with torch.no_grad():
        embeds = frozen.embeddings(ids)
        full = frozen.model(inputs_embeds=embeds, attention_mask=mask).logits[torch.arange(3), pos]
        torch.testing.assert_close(frozen.mlm_logits_at(embeds, mask, pos), full, rtol=1e-5, atol=1e-5)
        frozen.mlm_split = lambda: None  # a head spread over several modules: the full path
        torch.testing.assert_close(frozen.mlm_logits_at(embeds, mask, pos), full)
