"""``FrozenModel``: the frozen foundation model that reads ``[Z ; E(x)]``.

Three kinds share one interface (:meth:`FrozenModel.forward` takes a prefix ``Z``
and token ids and returns what the task head needs):

* ``classifier`` – an encoder (default all-MiniLM-L6-v2); the pooled output of the
  text positions goes to a small trainable classification head (a documented
  variant of the paper, for encoders without an MLM head);
* ``mlm`` – a masked LM read at ``<mask>`` through a verbalizer (the paper's setting);
* ``causal`` – a causal LM: the label word is the next token after a template, or
  the loss is taken on answer tokens only (code tasks).

Weights are frozen (``requires_grad=False``, eval mode) and loaded once per process
through :mod:`lopa_fed.weights`. The frozen model accepts ``Z`` from outside, as a
tensor or numpy array, so a model host needs nothing per user.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from . import weights

KINDS = ("classifier", "mlm", "causal")


@dataclass
class FrozenOutput:
    """What a forward pass returns.

    ``pooled``  – ``B×d`` pooled text states (classifier kind);
    ``logits``  – ``B×V'`` logits at the read position (mlm/causal verbalizer), or
                  ``B×L×V`` full logits (answer-token LM, when ``lm_labels`` is given);
    ``loss``    – the answer-token LM loss when ``lm_labels`` is given.
    """

    pooled: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    loss: torch.Tensor | None = None


def infer_kind(name: str) -> str:
    """``classifier``, ``mlm`` or ``causal`` from a model's config (without loading weights)."""
    arch, model_type = weights.model_architecture(name)
    joined = " ".join(arch)
    if "MaskedLM" in joined:
        return "mlm"
    if "CausalLM" in joined or "LMHeadModel" in joined:
        return "causal"
    return "classifier"


class FrozenModel(nn.Module):
    """A frozen Hugging Face model that takes a soft prefix ``Z: B×T×d``.

    Parameters
    ----------
    model : nn.Module
        ``AutoModel`` (classifier), ``AutoModelForMaskedLM`` (mlm) or ``AutoModelForCausalLM`` (causal).
    tokenizer
        Its tokenizer.
    kind : str
        One of :data:`KINDS`.
    identity : str
        Name of the weights, recorded in checkpoints and exports.
    """

    def __init__(self, model: nn.Module, tokenizer, kind: str, identity: str) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        model.eval()
        model.requires_grad_(False)
        self.model = model
        self.tokenizer = tokenizer
        self.kind = kind
        self.identity = identity
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.d = int(self.embeddings.weight.shape[1])
        self._hash: str | None = None

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, name: str = "default", kind: str = "auto") -> FrozenModel:
        """Load by name (see :mod:`lopa_fed.weights`), once per process per ``(name, kind)``."""
        kind = infer_kind(name) if kind == "auto" else kind
        if kind not in KINDS:
            raise ValueError(f"kind must be auto or one of {KINDS}, got {kind!r}")
        key = (weights.resolve(name).identity, kind)
        if key not in _FROZEN:
            loader = {"classifier": "base", "mlm": "mlm", "causal": "causal"}[kind]
            model, tokenizer, src = weights.load_pretrained(name, loader)
            _FROZEN[key] = cls(model, tokenizer, kind, src.identity)
        return _FROZEN[key]

    # ------------------------------------------------------------------ parts
    @property
    def embeddings(self) -> nn.Embedding:
        """The frozen input-embedding table ``V×d``."""
        return self.model.get_input_embeddings()

    def embedding_hash(self) -> str:
        """SHA-256 of the input-embedding matrix (fp32 bytes), to detect a model mismatch."""
        if self._hash is None:
            w = self.embeddings.weight.detach().float().contiguous().numpy()
            self._hash = hashlib.sha256(w.tobytes()).hexdigest()
        return self._hash

    def label_token_ids(self, words: tuple[str, ...] | list[str]) -> list[int]:
        """First token id of each verbalizer word, as it would appear after a space.

        Raises ``ValueError`` if two words share a first token.
        """
        ids = []
        for w in words:
            toks = self.tokenizer.encode(" " + w, add_special_tokens=False)
            if self.kind == "mlm" and len(toks) != 1:
                alt = self.tokenizer.encode(w.lower(), add_special_tokens=False)
                toks = alt if len(alt) == 1 else toks
            if not toks:
                raise ValueError(f"label word {w!r} tokenises to nothing")
            ids.append(int(toks[0]))
        if len(set(ids)) != len(ids):
            raise ValueError(f"label words {list(words)} share a first token ({ids}); choose distinct words")
        return ids

    # ------------------------------------------------------------------ forward
    @staticmethod
    def as_tensor(z: torch.Tensor | np.ndarray | None) -> torch.Tensor | None:
        """Accept ``Z`` as a tensor or a numpy array (e.g. from onnxruntime)."""
        if z is None or isinstance(z, torch.Tensor):
            return z
        return torch.from_numpy(np.ascontiguousarray(z, dtype=np.float32))

    def build_inputs(
        self, z: torch.Tensor | None, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``[Z ; E(x)]`` and its mask: ``B×(T+L)×d`` and ``B×(T+L)`` (T leading ones)."""
        embeds = self.embeddings(input_ids)
        if z is None or z.shape[1] == 0:
            return embeds, attention_mask
        z = z.to(embeds.dtype)
        ones = torch.ones(z.shape[0], z.shape[1], dtype=attention_mask.dtype)
        return torch.cat([z, embeds], 1), torch.cat([ones, attention_mask], 1)

    @staticmethod
    def left_align(*tensors: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        """Rotate each row so its padding (``mask == 0`` at the end) moves to the front.

        Used for decoders so the last position is the last real token. Works on
        ``B×L`` and ``B×L×d`` tensors; ``mask`` is the right-padded ``B×L`` mask.
        """
        L = mask.shape[1]
        n_pad = L - mask.long().sum(1, keepdim=True)
        idx = (torch.arange(L).unsqueeze(0) - n_pad) % L
        out = []
        for t in (*tensors, mask):
            gi = idx if t.dim() == 2 else idx.unsqueeze(-1).expand(-1, -1, t.shape[-1])
            out.append(torch.gather(t, 1, gi))
        return out

    def mlm_split(self) -> tuple[nn.Module, nn.Module] | None:
        """``(encoder body, MLM head)`` when the masked LM has exactly one head module.

        BERT (``bert`` + ``cls``) and RoBERTa (``roberta`` + ``lm_head``) do; models whose
        head is spread over several modules (e.g. DistilBERT) return ``None``.
        """
        prefix = getattr(self.model, "base_model_prefix", "")
        body = getattr(self.model, prefix, None) if prefix else None
        heads = [m for name, m in self.model.named_children() if name != prefix]
        return (body, heads[0]) if body is not None and len(heads) == 1 else None

    def mlm_logits_at(self, embeds: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """MLM logits ``B×V`` at one position per row (``pos: B``).

        The head runs on the ``B`` read positions only, not on all ``B×L``: on a 30k-word
        vocabulary that is most of the forward cost at short lengths.
        """
        rows = torch.arange(embeds.shape[0])
        split = self.mlm_split()
        if split is None:
            return self.model(inputs_embeds=embeds, attention_mask=mask).logits[rows, pos]
        body, head = split
        states = body(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
        return head(states[rows, pos])

    def forward(
        self,
        z: torch.Tensor | np.ndarray | None,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        *,
        read_pos: torch.Tensor | None = None,
        label_ids: list[int] | None = None,
        lm_labels: torch.Tensor | None = None,
    ) -> FrozenOutput:
        """Run the frozen model on ``[Z ; x]``.

        Parameters
        ----------
        z : B×T×d, optional
            Soft prefix (``None`` or ``T=0`` for no prompt).
        input_ids, attention_mask : B×L
            Right-padded tokens of x.
        read_pos : B, optional
            mlm: index of ``<mask>`` within x.
        label_ids : list of int, optional
            Verbalizer token ids; mlm/causal logits are restricted to these (``B×C``).
        lm_labels : B×L, optional
            causal answer-token LM: target ids with ``-100`` on prompt/pad positions.
        """
        z = self.as_tensor(z)
        embeds, mask = self.build_inputs(z, input_ids, attention_mask)
        t = 0 if z is None else z.shape[1]
        if self.kind == "classifier":
            out = self.model(inputs_embeds=embeds, attention_mask=mask)
            states = out.last_hidden_state[:, t:]
            w = attention_mask.to(states.dtype).unsqueeze(-1)
            return FrozenOutput(pooled=(states * w).sum(1) / w.sum(1).clamp(min=1.0))
        if self.kind == "mlm":
            if read_pos is None:
                raise ValueError("mlm needs read_pos (the <mask> index)")
            at = self.mlm_logits_at(embeds, mask, read_pos + t)
            return FrozenOutput(logits=at[:, label_ids] if label_ids is not None else at)
        # causal
        if lm_labels is not None:
            pad = torch.full((lm_labels.shape[0], t), -100, dtype=lm_labels.dtype)
            labels = torch.cat([pad, lm_labels], 1)
            out = self.model(inputs_embeds=embeds, attention_mask=mask, labels=labels)
            return FrozenOutput(logits=out.logits, loss=out.loss)
        embeds, mask = self.left_align(embeds, mask=mask)
        position_ids = (mask.long().cumsum(1) - 1).clamp(min=0)
        out = self.model(inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids, logits_to_keep=1)
        last = out.logits[:, -1]
        return FrozenOutput(logits=last[:, label_ids] if label_ids is not None else last)


_FROZEN: dict[tuple[str, str], FrozenModel] = {}
