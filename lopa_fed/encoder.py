"""The frozen instance encoder ``Enc`` and its feature cache.

``Enc`` is frozen, so ``e = Enc(x)`` depends only on the text. :class:`InstanceEncoder`
keeps an LRU cache keyed by a hash of the text, so each example is encoded once
per process (not once per epoch, round or client) and the cache size is bounded.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from . import weights

TextInput = str | tuple[str, str | None]


class Pooler(nn.Module):
    """Pool token states ``B×L×h`` with mask ``B×L`` to ``B×h``.

    ``mode`` is ``"mean"`` (masked mean), ``"cls"`` (first token) or ``"last"``
    (last non-pad token, for decoders); ``normalize`` L2-normalises the result.
    """

    def __init__(self, mode: str = "mean", normalize: bool = False) -> None:
        super().__init__()
        if mode not in ("mean", "cls", "last"):
            raise ValueError(f"pooling must be mean, cls or last, got {mode!r}")
        self.mode = mode
        self.normalize = normalize

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.mode == "cls":
            pooled = states[:, 0]
        elif self.mode == "last":
            idx = mask.long().sum(1).clamp(min=1) - 1
            pooled = states[torch.arange(states.shape[0]), idx]
        else:
            w = mask.to(states.dtype).unsqueeze(-1)
            pooled = (states * w).sum(1) / w.sum(1).clamp(min=1e-9)
        if self.normalize:
            pooled = nn.functional.normalize(pooled, p=2, dim=-1)
        return pooled


def default_pooling(directory: str, model_type: str) -> tuple[str, bool]:
    """Pooling for an encoder: sentence-transformers' own config when present, else by architecture.

    all-MiniLM-L6-v2 → mean + L2 normalisation; RoBERTa/BERT → first token
    (the paper's RoBERTa-large setting); decoders → last token.
    """
    d = Path(directory)
    pool_cfg = d / "1_Pooling" / "config.json"
    if pool_cfg.is_file():
        cfg = json.loads(pool_cfg.read_text())
        mode = "cls" if cfg.get("pooling_mode_cls_token") else "mean"
        normalize = False
        modules = d / "modules.json"
        if modules.is_file():
            normalize = any("Normalize" in m.get("type", "") for m in json.loads(modules.read_text()))
        return mode, normalize
    if model_type in ("llama", "mistral", "qwen2", "gpt2", "phi", "phi3", "gemma", "gemma2"):
        return "last", False
    return "cls", False


class EncoderNet(nn.Module):
    """``(input_ids: B×L, attention_mask: B×L) -> e: B×h``: the frozen network plus pooling.

    This is the traceable part used by ONNX export.
    """

    def __init__(self, model: nn.Module, pooler: Pooler) -> None:
        super().__init__()
        self.model = model
        self.pooler = pooler

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        states = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        return self.pooler(states, attention_mask)


class InstanceEncoder:
    """Frozen encoder with a bounded, content-keyed feature cache.

    Parameters
    ----------
    model, tokenizer
        A Hugging Face base model (returns ``last_hidden_state``) and its tokenizer.
    identity : str
        Name of the weights (recorded in checkpoints and exports).
    pooling, normalize
        See :class:`Pooler`.
    cache_size : int
        Maximum number of cached feature vectors (LRU eviction).
    max_length : int
        Token limit for the encoder input.
    batch_size : int
        Encoder batch size for cache misses.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        identity: str,
        pooling: str = "mean",
        normalize: bool = False,
        cache_size: int = 200_000,
        max_length: int = 256,
        batch_size: int = 64,
    ) -> None:
        self.net = EncoderNet(model, Pooler(pooling, normalize)).eval()
        self.net.requires_grad_(False)
        self.tokenizer = tokenizer
        self.identity = identity
        self.cache_size = int(cache_size)
        self.max_length = int(max_length)
        self.batch_size = int(batch_size)
        self.hidden_size = int(model.config.hidden_size)
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()
        #: Number of forward passes through the network (for tests and benchmarks).
        self.forward_calls = 0
        self.hits = 0
        self.misses = 0

    @classmethod
    def load(cls, name: str = "default", **kwargs) -> InstanceEncoder:
        """Load a frozen encoder by name through the per-process weight cache.

        The same name returns the same :class:`InstanceEncoder` (and hence the same feature
        cache) for the life of the process.
        """
        key = (name, tuple(sorted(kwargs.items())))
        with _ENCODERS_LOCK:
            if key not in _ENCODERS:
                model, tokenizer, src = weights.load_pretrained(name, "base")
                arch, model_type = weights.model_architecture(name)
                directory = src.directory
                mode, normalize = default_pooling(directory, model_type)
                kwargs.setdefault("pooling", mode)
                kwargs.setdefault("normalize", normalize)
                if tokenizer.pad_token is None:
                    tokenizer.pad_token = tokenizer.eos_token
                _ENCODERS[key] = cls(model, tokenizer, src.identity, **kwargs)
            return _ENCODERS[key]

    @staticmethod
    def key(text: TextInput) -> str:
        """Cache key: SHA-1 of the text (pairs joined with a unit separator)."""
        if isinstance(text, tuple):
            text = text[0] + "\x1f" + (text[1] or "")
        return hashlib.sha1(text.encode("utf-8")).hexdigest()

    def tokenize(self, texts: Sequence[TextInput]) -> dict[str, torch.Tensor]:
        """Tokenise texts (or ``(a, b)`` pairs) to ``input_ids``/``attention_mask``: ``B×L``.

        Each item is tokenised as what it is, so a single text gets the same ids whether or
        not the batch also holds pairs (a mixed batch is tokenised item by item, then padded).
        """
        a = [t[0] if isinstance(t, tuple) else t for t in texts]
        b = [t[1] if isinstance(t, tuple) else None for t in texts]
        kw = {"truncation": True, "max_length": self.max_length}
        if all(x is not None for x in b):
            enc = self.tokenizer(a, b, padding=True, return_tensors="pt", **kw)
        elif all(x is None for x in b):
            enc = self.tokenizer(a, padding=True, return_tensors="pt", **kw)
        else:
            items = [self.tokenizer(x, y, **kw) if y is not None else self.tokenizer(x, **kw) for x, y in zip(a, b)]
            enc = self.tokenizer.pad(
                [{"input_ids": e["input_ids"], "attention_mask": e["attention_mask"]} for e in items],
                padding=True,
                return_tensors="pt",
            )
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    @torch.no_grad()
    def _forward(self, texts: Sequence[TextInput]) -> torch.Tensor:
        enc = self.tokenize(texts)
        self.forward_calls += 1
        return self.net(enc["input_ids"], enc["attention_mask"]).float()

    def encode(self, texts: Sequence[TextInput]) -> torch.Tensor:
        """Features ``e: B×h`` for ``texts``, computing only cache misses.

        Misses are encoded in length-sorted batches of :attr:`batch_size`.
        """
        keys = [self.key(t) for t in texts]
        out: list[torch.Tensor | None] = [None] * len(keys)
        missing: dict[str, TextInput] = {}
        with self._lock:
            for i, k in enumerate(keys):
                v = self._cache.get(k)
                if v is None:
                    missing.setdefault(k, texts[i])
                else:
                    self._cache.move_to_end(k)
                    out[i] = v
                    self.hits += 1
        if missing:
            items = sorted(missing.items(), key=lambda kv: len(str(kv[1])))
            fresh: dict[str, torch.Tensor] = {}
            for s in range(0, len(items), self.batch_size):
                chunk = items[s : s + self.batch_size]
                feats = self._forward([t for _, t in chunk])
                fresh.update({k: f for (k, _), f in zip(chunk, feats)})
            with self._lock:
                self.misses += len(fresh)
                for k, f in fresh.items():
                    self._cache[k] = f
                    self._cache.move_to_end(k)
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
            out = [fresh[k] if o is None else o for k, o in zip(keys, out)]
        if not out:
            return torch.zeros(0, self.hidden_size)
        return torch.stack(out)  # type: ignore[arg-type]

    def cache_info(self) -> dict[str, int]:
        """``{"size", "max_size", "hits", "misses", "forward_calls"}``."""
        return {
            "size": len(self._cache),
            "max_size": self.cache_size,
            "hits": self.hits,
            "misses": self.misses,
            "forward_calls": self.forward_calls,
        }

    def clear_cache(self) -> None:
        """Drop every cached feature."""
        with self._lock:
            self._cache.clear()


_ENCODERS: dict[tuple, InstanceEncoder] = {}
_ENCODERS_LOCK = threading.RLock()
