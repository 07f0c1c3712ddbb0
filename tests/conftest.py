"""Shared fixtures: tiny random models (fast unit tests) and the real packaged weights (integration)."""

from __future__ import annotations

import os
from collections.abc import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

from lopa_fed import weights
from lopa_fed.backbone import FrozenModel
from lopa_fed.encoder import InstanceEncoder


def minilm_tokenizer():
    """The real MiniLM WordPiece tokenizer (local files; cheap to load)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(weights.minilm_path()))


def tiny_bert(kind: str = "base", seed: int = 0, hidden: int = 32):
    """A 2-layer random BERT (base or MLM) sharing MiniLM's vocabulary."""
    from transformers import BertConfig, BertForMaskedLM, BertModel

    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=30522, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=128,
    )
    return (BertForMaskedLM if kind == "mlm" else BertModel)(cfg).eval()


def tiny_llama(seed: int = 0, hidden: int = 32):
    """A 2-layer random Llama causal LM sharing MiniLM's vocabulary."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=30522, hidden_size=hidden, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0,
    )
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="session")
def tok():
    return minilm_tokenizer()


@pytest.fixture()
def tiny_frozen(tok):
    """Classifier-kind frozen model: tiny random BERT, d=32."""
    return FrozenModel(tiny_bert("base", seed=1), tok, "classifier", "tiny-bert")


@pytest.fixture()
def tiny_encoder(tok):
    """Tiny random instance encoder, h=24, with its own feature cache."""
    return InstanceEncoder(tiny_bert("base", seed=2, hidden=24), tok, "tiny-enc", pooling="mean", cache_size=1000)


@pytest.fixture(scope="session")
def minilm_frozen():
    return FrozenModel.load("default")


@pytest.fixture(scope="session")
def minilm_encoder():
    return InstanceEncoder.load("default")


# ------------------------------------------------------- federation runs (tests/server)
#: The smallest training that still exercises a real round: 2 local steps of 8 real examples
#: from a 120-example pool per client, 8 test examples each.
TINY_TRAINING = {"local-steps": 2, "batch-size": 8, "pool-size": 120, "max-test-examples": 8}
#: What a 2-client, 2-round simulation adds to it.
TINY_SIMULATION = {"num-server-rounds": 2, "min-nodes": 2, "round-timeout": 300.0}


@pytest.fixture
def tiny_run_config() -> Callable[..., dict]:
    """A factory of fresh run-config dicts: ``tiny_run_config(extra, simulation=True)``.

    ``extra`` (run-config keys, hyphenated) overrides the tiny defaults; ``simulation=False``
    leaves out the round, node and timeout keys for tests that set their own.
    """

    def make(extra: dict | None = None, simulation: bool = True) -> dict:
        return {**TINY_TRAINING, **(TINY_SIMULATION if simulation else {}), **(extra or {})}

    return make
