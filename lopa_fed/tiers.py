"""Encoder tiers: instance encoders of different cost, all built from the weights we ship.

Only Zs (m×d, in the frozen model's embedding space) is federated, so each client may run
its own instance encoder; the u/v heads that read it are private. The tiers:

==============  =========================================================  ==================
name            encoder                                                    identity
==============  =========================================================  ==================
``minilm``      all-MiniLM-L6-v2, all 6 layers, mean-pooled, L2-normalised  ``sentence-transformers/all-MiniLM-L6-v2``
``minilm-l<k>`` the same model cut to its first k layers (1 ≤ k ≤ 5),      ``…all-MiniLM-L6-v2@layers=k``
                same pooling (``minilm-l3`` is the documented weak tier)
``static``      no transformer: the frozen model's own input-embedding     ``static@<frozen identity>``
                rows of the tokens, masked mean, L2-normalised
==============  =========================================================  ==================

Each tier is an :class:`~lopa_fed.encoder.InstanceEncoder` (own feature cache), so training,
caching and ONNX export treat them alike. :func:`load_encoder` is what
:func:`lopa_fed.model.build_model` calls: a tier name *or* a tier identity (as recorded in a
checkpoint) gives the tier, any other name goes to :meth:`InstanceEncoder.load`.
:func:`state_key` is the short key of an identity used in private-state file names.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from types import SimpleNamespace

import torch
from torch import nn

from . import weights
from .encoder import InstanceEncoder, default_pooling
from .errors import ConfigError

__all__ = [
    "FULL_LAYERS", "TIERS", "TierInfo", "encoder_identity", "is_tier", "load_encoder", "state_key", "tier_info",
    "tier_name",
]

#: Layers of all-MiniLM-L6-v2.
FULL_LAYERS = 6
#: The tiers listed in ``--help`` and README (``minilm-l<k>`` accepts any 1 ≤ k < 6).
TIERS = ("minilm", "minilm-l3", "static")
_MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"
_TRUNCATED = re.compile(r"minilm-l(\d+)")
_LAYERS_ID = re.compile(re.escape(_MINILM_ID) + r"@layers=(\d+)")
_STATIC_PREFIX = "static@"


@dataclass(frozen=True)
class TierInfo:
    """What a tier is, without loading it.

    Attributes
    ----------
    name : str
        ``minilm``, ``minilm-l<k>`` or ``static``.
    layers : int
        Transformer layers the encoder runs (0 for ``static``).
    description : str
        One line for ``--help`` and README.
    """

    name: str
    layers: int
    description: str


def tier_info(name: str) -> TierInfo | None:
    """The :class:`TierInfo` of a tier name, or ``None`` if ``name`` is not a tier.

    Raises
    ------
    ConfigError
        ``minilm-l<k>`` with k outside 1..5.
    """
    key = str(name).strip().lower()
    if key == "minilm":
        return TierInfo("minilm", FULL_LAYERS, "all-MiniLM-L6-v2, 6 layers (the default encoder)")
    if key == "static":
        return TierInfo("static", 0, "the frozen model's token embeddings, mean-pooled; no transformer")
    m = _TRUNCATED.fullmatch(key)
    if m is None:
        return None
    k = int(m.group(1))
    if not 1 <= k < FULL_LAYERS:
        raise ConfigError(f"encoder tier {name!r}: MiniLM has {FULL_LAYERS} layers; use minilm-l1 to minilm-l5 or minilm")
    return TierInfo(key, k, f"all-MiniLM-L6-v2 cut to its first {k} layers")


def is_tier(name: str) -> bool:
    """Whether ``name`` is a tier name (``default`` is not: it means the run's default encoder)."""
    return tier_info(name) is not None


def tier_name(identity: str) -> str | None:
    """The tier name of an encoder identity (``None`` for identities of other encoders)."""
    if identity == _MINILM_ID:
        return "minilm"
    m = _LAYERS_ID.fullmatch(identity)
    if m is not None:
        return f"minilm-l{int(m.group(1))}"
    if identity.startswith(_STATIC_PREFIX):
        return "static"
    return None


def encoder_identity(name: str, frozen_identity: str) -> str:
    """The identity the encoder ``name`` will have, without loading it.

    ``frozen_identity`` is the frozen model's (the ``static`` tier is made of its embeddings).
    """
    if tier_name(name) is not None:
        return name
    info = tier_info(name)
    if info is None:
        return weights.resolve(name).identity
    if info.name == "minilm":
        return _MINILM_ID
    if info.name == "static":
        return _STATIC_PREFIX + frozen_identity
    return f"{_MINILM_ID}@layers={info.layers}"


def state_key(identity: str) -> str:
    """Short key of an encoder identity for private-state file names.

    ``""`` for the full MiniLM and for encoders that are not tiers (their files keep the
    name ``partition-<i>-of-<n>.safetensors``); the tier name otherwise (``minilm-l3``, ``static``).
    """
    name = tier_name(identity)
    return "" if name in (None, "minilm") else str(name)


# ---------------------------------------------------------------------------- building the tiers
class StaticEmbeddings(nn.Module):
    """``(input_ids: B×L, attention_mask: B×L) -> (states: B×L×d,)``: an embedding lookup, nothing else.

    The table is the frozen model's own input embeddings (shared, not copied, frozen).
    """

    def __init__(self, table: nn.Embedding) -> None:
        super().__init__()
        self.table = table
        self.config = SimpleNamespace(hidden_size=int(table.weight.shape[1]))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.table(input_ids),)


def _truncated_minilm(layers: int) -> nn.Module:
    """all-MiniLM-L6-v2 with only its first ``layers`` transformer layers (modules shared with the full model)."""
    from transformers import AutoModel

    base, _, _ = weights.load_pretrained("minilm", "base")
    cfg = base.config.__class__.from_dict({**base.config.to_dict(), "num_hidden_layers": int(layers)})
    with torch.device("meta"):
        model = AutoModel.from_config(cfg)
    model.embeddings = base.embeddings
    model.encoder.layer = nn.ModuleList(list(base.encoder.layer)[:layers])
    if getattr(model, "pooler", None) is not None:
        model.pooler = base.pooler
    model.eval()
    model.requires_grad_(False)
    return model


def _build(name: str, frozen) -> InstanceEncoder:
    info = tier_info(name)
    assert info is not None
    if info.name == "minilm":
        return InstanceEncoder.load("minilm")
    if info.name == "static":
        if frozen is None:
            raise ConfigError("encoder tier 'static' reads the frozen model's embeddings; build it with the frozen model")
        net = StaticEmbeddings(frozen.embeddings)
        return InstanceEncoder(net, frozen.tokenizer, _STATIC_PREFIX + frozen.identity, pooling="mean", normalize=True)
    _, tokenizer, src = weights.load_pretrained("minilm", "base")
    mode, normalize = default_pooling(src.directory, "bert")
    model = _truncated_minilm(info.layers)
    return InstanceEncoder(model, tokenizer, f"{_MINILM_ID}@layers={info.layers}", pooling=mode, normalize=normalize)


def load_encoder(name: str, frozen=None) -> InstanceEncoder:
    """The instance encoder called ``name``: a tier (by name or identity), else :meth:`InstanceEncoder.load`.

    Parameters
    ----------
    name : str
        A tier name (:data:`TIERS`, ``minilm-l<k>``), a tier identity (as checkpoints record
        it), or any encoder name :func:`lopa_fed.weights.resolve` accepts.
    frozen : FrozenModel, optional
        The frozen model; the ``static`` tier uses its embeddings and tokenizer.

    Returns
    -------
    InstanceEncoder
        Loaded once per process per tier (and per frozen model for ``static``).

    Raises
    ------
    ConfigError
        A static identity recorded for another frozen model, or a bad ``minilm-l<k>``.
    """
    tier = tier_name(name) or (tier_info(name).name if is_tier(name) else None)
    if tier is None:
        return InstanceEncoder.load(name)
    if name.startswith(_STATIC_PREFIX) and frozen is not None and name != _STATIC_PREFIX + frozen.identity:
        raise ConfigError(f"encoder {name!r} is the static tier of another frozen model than {frozen.identity!r}")
    key = (tier, getattr(frozen, "identity", None) if tier == "static" else None)
    with _LOCK:
        if key not in _TIER_ENCODERS:
            _TIER_ENCODERS[key] = _build(tier, frozen)
        return _TIER_ENCODERS[key]


_TIER_ENCODERS: dict[tuple[str, str | None], InstanceEncoder] = {}
_LOCK = threading.RLock()
