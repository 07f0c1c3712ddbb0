"""Configuration dataclasses for lopa-fed.

Each config validates itself on construction and round-trips through JSON
(:meth:`to_dict` / :meth:`from_dict`), so a checkpoint, a CLI run and a Flower
run config all describe the same thing the same way.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Any, TypeVar

from .errors import ConfigError

#: Prompt-generator methods (``head`` and ``lora`` have no generator).
PROMPT_METHODS = ("pt", "idpg", "lopa", "lopa-add", "lopa-max", "lopa-concat", "lopa-instance")
#: Every method the training harness accepts.
METHODS = (*PROMPT_METHODS, "head", "lora")
#: Initialisations of Zs (see :class:`LoPAConfig`).
ZS_INITS = ("auto", "normal", "vocab")
#: Paper learning rates on GLUE (LOPA.md, "Training settings").
PAPER_LR = {"lopa": 1e-5, "pt": 1e-4, "idpg": 1e-4, "lora": 1e-4, "head": 1e-4}


T = TypeVar("T")


def _check_types(obj: Any) -> None:
    """Refuse a field whose value has the wrong type (``m="ten"``, ``m=10.7``, ``lr=inf``), naming the field."""
    for f in dataclasses.fields(obj):
        value, kind = getattr(obj, f.name), str(f.type)
        if value is None and "None" in kind:
            continue
        if kind.startswith("int"):
            ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
            want = "an integer"
        elif kind.startswith("float"):
            ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
            want = "a finite number"
        elif kind.startswith("str"):
            ok, want = isinstance(value, str), "a string"
        elif kind.startswith("tuple"):
            ok, want = isinstance(value, tuple) and all(isinstance(v, str) for v in value), "a list of strings"
        else:  # pragma: no cover - every field has one of the types above
            continue
        if not ok:
            raise ConfigError(f"{type(obj).__name__}.{f.name} must be {want}, got {value!r}")


def _from_dict(cls: type[T], data: dict[str, Any]) -> T:
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    if not isinstance(data, dict):
        raise ConfigError(f"{cls.__name__}: expected a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown field(s) {unknown}; known fields are {sorted(names)}")
    kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items()}
    return cls(**kwargs)


@dataclass(frozen=True)
class LoPAConfig:
    """What prompt generator to build and how big it is.

    Parameters
    ----------
    method : str
        One of :data:`METHODS`. ``lopa-*`` are the paper's function-encoding ablations.
    m : int
        Number of soft prompt tokens (paper: 10). ``lopa-concat`` emits ``2m`` tokens.
    r : int
        Rank of the instance part ``u vᵀ`` (paper: 4 on GLUE, 1 on code).
    hidden : int
        Hidden width h′ of the instance heads (paper: 256 on GLUE).
    dropout : float
        Dropout in front of each head (paper: 0.1).
    lora_r, lora_alpha, lora_dropout, lora_targets
        LoRA baseline settings (paper: r=16, alpha=32, dropout=0.1 on q/k/v).
        Empty ``lora_targets`` means the q/k/v projections of the model's architecture.
    zs_init_std : float
        With ``zs_init="normal"``, Zs is initialised from N(0, zs_init_std²); the paper uses N(0, 1).
    zs_init : str
        ``"normal"`` (the paper's N(0, zs_init_std²)), ``"vocab"`` (each row of Zs is a randomly
        chosen row of the frozen model's input-embedding matrix, PEFT's ``SAMPLE_VOCAB``, so the
        prompt starts at the scale of real token embeddings) or ``"auto"`` (the task's choice for
        the frozen model's kind, :meth:`lopa_fed.tasks.TaskDefaults.zs_init_for`; ``normal`` when
        no task decides). The paper's N(0, 1) assumes an embedding LayerNorm, as BERT and RoBERTa
        have; a Llama-style decoder has none, and N(0, 1) rows are far larger than its token
        embeddings, so on a causal verbalizer the prompt first breaks the model.
    """

    method: str = "lopa"
    m: int = 10
    r: int = 4
    hidden: int = 256
    dropout: float = 0.1
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.1
    lora_targets: tuple[str, ...] = ()
    zs_init_std: float = 1.0
    zs_init: str = "auto"

    def __post_init__(self) -> None:
        _check_types(self)
        if self.zs_init not in ZS_INITS:
            raise ConfigError(f"zs_init must be one of {', '.join(ZS_INITS)}, got {self.zs_init!r}")
        if self.method not in METHODS:
            raise ConfigError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        for name in ("m", "r", "hidden", "lora_r", "lora_alpha"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if not self.zs_init_std > 0:
            raise ConfigError(f"zs_init_std must be > 0, got {self.zs_init_std!r}")
        for name in ("dropout", "lora_dropout"):
            if not 0.0 <= float(getattr(self, name)) < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), got {getattr(self, name)!r}")

    @property
    def has_generator(self) -> bool:
        """Whether this method builds a prompt generator (everything but ``head`` and ``lora``)."""
        return self.method in PROMPT_METHODS

    @property
    def num_tokens(self) -> int:
        """Number of soft tokens prepended to the input (0 for ``head``/``lora``)."""
        if not self.has_generator:
            return 0
        return 2 * self.m if self.method == "lopa-concat" else self.m

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable view."""
        d = dataclasses.asdict(self)
        d["lora_targets"] = list(self.lora_targets)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoPAConfig:
        """Inverse of :meth:`to_dict`; rejects unknown keys."""
        return _from_dict(cls, data)


@dataclass(frozen=True)
class TrainConfig:
    """Single-party optimisation settings (LOPA.md, "Training settings").

    ``lr=None`` means the paper's learning rate for the method (:data:`PAPER_LR`).
    ``max_steps`` caps the number of optimiser steps across epochs.
    """

    lr: float | None = None
    epochs: int = 20
    max_steps: int | None = None
    batch_size: int = 16
    eval_batch_size: int = 64
    warmup_ratio: float = 0.06
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 9876
    max_length: int = 256

    def __post_init__(self) -> None:
        _check_types(self)
        if self.lr is not None and not (self.lr > 0):
            raise ConfigError(f"lr must be > 0, got {self.lr!r}")
        if self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs!r}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"max_steps must be >= 1 when given, got {self.max_steps!r}")
        if self.batch_size < 1 or self.eval_batch_size < 1:
            raise ConfigError("batch sizes must be >= 1")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")
        if self.max_length < 8:
            raise ConfigError(f"max_length must be >= 8, got {self.max_length!r}")

    def learning_rate(self, method: str) -> float:
        """The configured lr, or the paper's default for ``method``."""
        if self.lr is not None:
            return float(self.lr)
        base = method.split("-")[0] if method.startswith("lopa") else method
        return PAPER_LR.get(base, 1e-4)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable view."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; rejects unknown keys."""
        return _from_dict(cls, data)
