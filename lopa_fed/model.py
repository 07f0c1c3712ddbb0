"""``PromptedModel``: frozen model + prompt generator + task head, with one role map.

This is the unit that training, checkpoints, federation and export handle. Its
trainable tensors are named with a prefix that says which part owns them:

* ``prompt.*`` – the prompt generator (roles come from the generator: ``zs`` shared, heads private);
* ``head.*``   – the classification head of a ``classifier`` frozen model (shared: it is task-level);
* ``lora.*``   – LoRA adapter weights (shared).

:meth:`PromptedModel.roles` is the single declaration of what is shared and what is
private; nothing else decides it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import torch
from torch import nn

from .backbone import FrozenModel
from .config import LoPAConfig
from .encoder import InstanceEncoder
from .prompts import PRIVATE, SHARED, PromptGenerator, build_generator
from .tiers import load_encoder

QKV = {
    "bert": ("query", "key", "value"),
    "roberta": ("query", "key", "value"),
    "xlm-roberta": ("query", "key", "value"),
    "distilbert": ("q_lin", "k_lin", "v_lin"),
}


@dataclass
class Output:
    """``loss`` (scalar), ``logits`` (B×C, or B×L×V for the answer-token LM) and ``preds`` (B, or None)."""

    loss: torch.Tensor
    logits: torch.Tensor
    preds: torch.Tensor | None


class PromptedModel(nn.Module):
    """A frozen model personalised by a soft prompt (or LoRA / a bare head, for baselines).

    Parameters
    ----------
    frozen : FrozenModel
        Shared frozen model (never copied, never trained; for ``lora`` a private copy is made).
    config : LoPAConfig
        Method and sizes.
    num_labels : int
        Number of classes (0 for answer-token LM tasks).
    label_words : tuple of str
        Verbalizer words for ``mlm``/``causal`` classification.
    encoder : InstanceEncoder, optional
        Frozen instance encoder; required by methods whose generator reads features.
    """

    def __init__(
        self,
        frozen: FrozenModel,
        config: LoPAConfig,
        num_labels: int = 2,
        label_words: tuple[str, ...] = (),
        encoder: InstanceEncoder | None = None,
    ) -> None:
        super().__init__()
        if config.zs_init == "auto":  # no task to ask here: the paper's init (build_model asks the task)
            config = replace(config, zs_init="normal")
        self.config = config
        self.num_labels = int(num_labels)
        self.label_words = tuple(label_words)
        self.encoder = encoder
        self.prompt: PromptGenerator | None = None
        self.lora: nn.Module | None = None
        if config.method == "lora":
            frozen = self._lora_copy(frozen, config)
        # Keep the frozen model out of the module tree: it is shared, not part of our state.
        object.__setattr__(self, "frozen", frozen)
        if config.has_generator:
            needs_enc = config.method != "pt"
            if needs_enc and encoder is None:
                raise ValueError(f"method {config.method!r} needs an instance encoder")
            h = encoder.hidden_size if encoder is not None else 0
            self.prompt = build_generator(config, h, frozen.d)
            if config.zs_init == "vocab":
                self._zs_from_vocab(frozen)
        self.head: nn.Linear | None = None
        self.label_ids: list[int] | None = None
        if frozen.kind == "classifier":
            if self.num_labels < 1:
                raise ValueError("a classifier frozen model needs num_labels >= 1")
            self.head = nn.Linear(frozen.d, self.num_labels)
            nn.init.normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)
        elif self.label_words:
            self.label_ids = frozen.label_token_ids(self.label_words)

    @torch.no_grad()
    def _zs_from_vocab(self, frozen: FrozenModel) -> None:
        """Overwrite every ``zs`` (m×d) with randomly chosen input-embedding rows (torch's global RNG)."""
        table = frozen.embeddings.weight  # V×d
        for name, p in self.prompt.named_parameters():
            if name.split(".")[-1] == "zs":
                rows = torch.randint(0, table.shape[0], (p.shape[0],))
                p.copy_(table[rows].to(p.dtype))

    # ---------------------------------------------------------------- LoRA
    def _lora_copy(self, frozen: FrozenModel, config: LoPAConfig) -> FrozenModel:
        from peft import LoraConfig, get_peft_model

        targets = list(config.lora_targets) or list(
            QKV.get(frozen.model.config.model_type, ("q_proj", "k_proj", "v_proj"))
        )
        base = copy.deepcopy(frozen.model)
        lcfg = LoraConfig(
            r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout, target_modules=targets
        )
        peft_model = get_peft_model(base, lcfg)
        self.lora = peft_model
        clone = FrozenModel.__new__(FrozenModel)
        nn.Module.__init__(clone)
        clone.model = peft_model
        clone.tokenizer, clone.kind, clone.identity, clone.d = frozen.tokenizer, frozen.kind, frozen.identity, frozen.d
        clone._hash = frozen._hash
        return clone

    # ---------------------------------------------------------------- roles and state
    def named_trainable(self) -> dict[str, nn.Parameter]:
        """Every trainable parameter by its public name (``prompt.*``, ``head.*``, ``lora.*``)."""
        out: dict[str, nn.Parameter] = {}
        if self.prompt is not None:
            out.update({f"prompt.{n}": p for n, p in self.prompt.named_parameters()})
        if self.head is not None:
            out.update({f"head.{n}": p for n, p in self.head.named_parameters()})
        if self.lora is not None:
            out.update({f"lora.{n}": p for n, p in self.lora.named_parameters() if p.requires_grad})
        return out

    def roles(self) -> dict[str, str]:
        """``{name: "shared" | "private"}`` for every trainable parameter."""
        roles: dict[str, str] = {}
        if self.prompt is not None:
            roles.update({f"prompt.{n}": r for n, r in self.prompt.roles().items()})
        for name in self.named_trainable():
            roles.setdefault(name, SHARED)
        return roles

    def shared_names(self) -> list[str]:
        """Names of shared (task-level) parameters, in a stable order."""
        return [n for n, r in self.roles().items() if r == SHARED]

    def private_names(self) -> list[str]:
        """Names of private (per-client) parameters, in a stable order."""
        return [n for n, r in self.roles().items() if r == PRIVATE]

    def state(self, names: list[str] | None = None) -> dict[str, torch.Tensor]:
        """Detached CPU copies of trainable tensors (all, or only ``names``)."""
        params = self.named_trainable()
        names = list(params) if names is None else names
        return {n: params[n].detach().clone().cpu() for n in names}

    def load_state(self, tensors: dict[str, torch.Tensor], strict_keys: bool = False) -> None:
        """Copy ``tensors`` into the matching parameters.

        Raises ``KeyError`` for unknown names and ``ValueError`` for a shape mismatch;
        with ``strict_keys`` every trainable parameter must be present.
        """
        params = self.named_trainable()
        unknown = sorted(set(tensors) - set(params))
        if unknown:
            raise KeyError(f"unknown parameter name(s) {unknown}; this model has {sorted(params)}")
        if strict_keys and set(tensors) != set(params):
            raise KeyError(f"missing parameter(s) {sorted(set(params) - set(tensors))}")
        for n, t in tensors.items():
            if tuple(t.shape) != tuple(params[n].shape):
                raise ValueError(f"{n}: shape {tuple(t.shape)} does not match the model's {tuple(params[n].shape)}")
        with torch.no_grad():
            for n, t in tensors.items():
                params[n].copy_(torch.as_tensor(t, dtype=params[n].dtype))

    def num_trainable(self) -> int:
        """Trainable scalars (the frozen model and encoder are not counted)."""
        return sum(p.numel() for p in self.named_trainable().values())

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters for the optimiser."""
        return list(self.named_trainable().values())

    # ---------------------------------------------------------------- forward
    def prompts(self, enc_texts: list, batch_size: int) -> torch.Tensor | None:
        """Soft prompt ``Z: B×T×d`` for a batch (``None`` for head/LoRA)."""
        if self.prompt is None:
            return None
        if self.prompt.uses_features:
            assert self.encoder is not None
            e = self.encoder.encode(enc_texts)
        else:
            e = torch.zeros(batch_size, 0)
        return self.prompt(e)

    def forward(self, batch: dict, z: torch.Tensor | None = None) -> Output:
        """Loss, logits and predictions for a collated batch (see :func:`lopa_fed.data.collate`).

        ``z`` overrides the generator, e.g. with a prompt computed on a device by the ONNX runtime.
        """
        ids, mask = batch["input_ids"], batch["attention_mask"]
        if z is None:
            z = self.prompts(batch["enc_texts"], ids.shape[0])
        if "lm_labels" in batch:
            out = self.frozen(z, ids, mask, lm_labels=batch["lm_labels"])
            return Output(loss=out.loss, logits=out.logits, preds=None)
        if self.head is not None:
            out = self.frozen(z, ids, mask)
            logits = self.head(out.pooled)
        else:
            out = self.frozen(z, ids, mask, read_pos=batch.get("read_pos"), label_ids=self.label_ids)
            logits = out.logits
        loss = nn.functional.cross_entropy(logits, batch["labels"]) if "labels" in batch else logits.new_zeros(())
        return Output(loss=loss, logits=logits, preds=logits.argmax(-1))

    def train(self, mode: bool = True) -> PromptedModel:
        """Train mode for our trainable parts; the shared frozen model stays in eval mode (LoRA's copy follows)."""
        super().train(mode)
        if self.lora is not None:
            self.lora.train(mode)
        return self


def build_model(
    task,
    config: LoPAConfig,
    model: str = "default",
    encoder: str = "default",
    kind: str = "auto",
    seed: int | None = None,
) -> PromptedModel:
    """Build a :class:`PromptedModel` for ``task`` from names, reusing per-process caches.

    The frozen model and the instance encoder are loaded once per process; only the
    small trainable parts are created here (seeded by ``seed`` when given). ``encoder`` may be an encoder
    tier (``minilm``, ``minilm-l<k>``, ``static``; :func:`lopa_fed.tiers.load_encoder`). ``zs_init="auto"``
    becomes the task's choice for the frozen model's kind, and the model's config records it.
    """
    frozen = FrozenModel.load(model, kind)
    if config.zs_init == "auto" and hasattr(task, "defaults"):
        config = replace(config, zs_init=task.defaults.zs_init_for(frozen.kind))
    enc = load_encoder(encoder, frozen) if config.has_generator and config.method != "pt" else None
    if seed is not None:
        torch.manual_seed(seed)
    num_labels = getattr(task, "num_labels", 0)
    words = tuple(getattr(task, "label_words", ())) if frozen.kind != "classifier" else ()
    return PromptedModel(frozen, config, num_labels=num_labels, label_words=words, encoder=enc)
