"""The model host: run the frozen model on ``[Z ; x]`` with a ``Z`` computed elsewhere.

The host keeps only task-level state: the frozen model and, for a ``classifier``
frozen model, the task's classification head (a *shared* tensor, written to
``host.safetensors`` by :func:`write_host_tensors`). It stores nothing per user: every
request carries its own soft prompt ``Z: B×T×d`` (numpy or torch), computed on the
device by :class:`export.runtime.PromptRuntime`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lopa_fed.backbone import FrozenModel
from lopa_fed.checkpoint import load_tensors, save_tensors
from lopa_fed.config import LoPAConfig
from lopa_fed.data import EncodedDataset
from lopa_fed.errors import ConfigError
from lopa_fed.model import PromptedModel
from lopa_fed.tasks import Example, Task, get_task
from lopa_fed.weights import name_for_identity

from .runtime import ExportFormatError, TextInput, read_sidecar

__all__ = ["HOST_FILE", "ModelHost", "embedding_hash_of", "predict_logits", "predict_with_prompts", "write_host_tensors"]

HOST_FILE = "host.safetensors"

#: ``enc_texts`` (a batch of ``(text_a, text_b)``) → ``Z: B×T×d`` (numpy or torch), or ``None``
#: to let the model's own generator compute it (the PyTorch path).
PromptFn = Callable[[list], "np.ndarray | torch.Tensor | None"]


def write_host_tensors(model: PromptedModel, path: Path) -> bool:
    """Write the classification head ``head.*`` (d×C weight, C bias) the host needs; ``False`` if there is none."""
    if model.head is None:
        return False
    save_tensors(path, model.state([n for n in model.named_trainable() if n.startswith("head.")]))
    return True


@torch.no_grad()
def predict_logits(
    model: PromptedModel, data: EncodedDataset, prompt_fn: PromptFn | None = None, batch_size: int = 32
) -> np.ndarray:
    """Class logits ``N×C`` for ``data``, with ``Z`` from ``prompt_fn`` (default: the model's generator).

    Parameters
    ----------
    model : PromptedModel
        Frozen model + task head (its generator is used only when ``prompt_fn`` is ``None``).
    data : EncodedDataset
        Encoded examples; ``enc_texts`` of each batch are passed to ``prompt_fn``.
    prompt_fn : callable, optional
        ``enc_texts → Z: B×T×d`` (numpy or torch).
    batch_size : int
        Batch size for the frozen model.
    """
    model.eval()
    logits: list[np.ndarray] = []
    for s in range(0, len(data), batch_size):
        batch = data.collate([data[i] for i in range(s, min(s + batch_size, len(data)))])
        z = prompt_fn(batch["enc_texts"]) if prompt_fn is not None else None
        out = model(batch, z=FrozenModel.as_tensor(z) if z is not None else None)
        if out.preds is None:
            raise ConfigError("this task has no class predictions (answer-token LM); infer supports classification tasks")
        logits.append(out.logits.float().numpy())  # B×C
    return np.concatenate(logits) if logits else np.zeros((0, max(model.num_labels, 1)), dtype=np.float32)


def predict_with_prompts(
    model: PromptedModel, data: EncodedDataset, prompt_fn: PromptFn | None = None, batch_size: int = 32
) -> np.ndarray:
    """Predicted classes ``(N,)``: the argmax of :func:`predict_logits`."""
    return predict_logits(model, data, prompt_fn, batch_size).argmax(-1)


class ModelHost:
    """Frozen model + task head, loaded from an export directory; takes ``Z`` from outside.

    Parameters
    ----------
    model : PromptedModel
        A ``head``-method model (no generator) wrapping the frozen model.
    task : Task
        Task whose templates and label words encode the text for the frozen model.
    max_length : int
        Token limit for the frozen model's input.
    """

    def __init__(self, model: PromptedModel, task: Task, max_length: int = 256) -> None:
        self.model = model
        self.task = task
        self.max_length = int(max_length)

    @classmethod
    def from_export(cls, directory: str | os.PathLike[str], model: str | None = None) -> ModelHost:
        """Load the frozen model named in ``export.json`` (or ``model``) and the task head.

        Raises
        ------
        ExportFormatError
            The export is for a task without class labels, ``export.json`` records no
            ``frozen_model.embedding_sha256``, the frozen model's embedding hash or width differs
            from the one recorded at export time (the prompts were trained for another model),
            or ``host.safetensors`` is missing.
        """
        directory = Path(directory)
        meta = read_sidecar(directory)
        task = _classification_task(directory, meta)
        frozen = matching_frozen_model(meta, model, directory)
        host_model = PromptedModel(
            frozen,
            LoPAConfig(method="head"),
            num_labels=int(meta.get("num_labels", task.num_labels)),
            label_words=tuple(meta.get("label_words") or ()),
        )
        if host_model.head is not None:
            path = directory / HOST_FILE
            if not path.is_file():
                raise ExportFormatError(f"{path} is missing: the classifier head is needed by the model host")
            host_model.load_state(load_tensors(path), strict_keys=True)
        return cls(host_model.eval(), task, int(meta.get("frozen_max_length", 256)))

    def encode(self, texts: Sequence[TextInput]) -> EncodedDataset:
        """Encode raw texts (or ``(a, b)`` pairs) for the frozen model (labels are dummies).

        Raises
        ------
        ConfigError
            No texts, or a pair task given a text without its second sentence.
        """
        if len(texts) == 0:
            raise ConfigError("no texts to classify")
        examples = []
        pair = bool(getattr(self.task, "is_pair", False))
        for i, t in enumerate(texts):
            a, b = (t, None) if isinstance(t, str) else (t[0], t[1])
            if pair and not b:
                raise ConfigError(f"task {self.task.name} takes sentence pairs; text {i} has no second sentence")
            examples.append(Example(a, b if pair else None, 0, f"input/{i}"))
        return self.task.encode(examples, self.model.frozen, self.max_length)

    def predict(self, data: EncodedDataset, prompt_fn: PromptFn, batch_size: int = 32) -> np.ndarray:
        """Predicted class indices ``(N,)`` with ``Z`` from ``prompt_fn``."""
        return predict_with_prompts(self.model, data, prompt_fn, batch_size)

    def label_name(self, index: int) -> str:
        """The verbalizer word of class ``index``."""
        return self.task.label_words[int(index)]


def _classification_task(directory: Path, meta: dict[str, Any]) -> Task:
    """The export's task, if it has class labels (the host classifies)."""
    name = meta.get("task")
    if not name:
        raise ExportFormatError(f"{directory}/export.json records no task; infer needs it to encode the text")
    task = get_task(name)
    if task.num_labels == 0:
        raise ExportFormatError(
            f"{directory} holds a prompt generator for {name!r}, a task without class labels; `lopa-fed infer` "
            "classifies. For generation, compute Z with export.runtime.PromptRuntime(dir).prompts([prompt]) and "
            "pass it as the prefix to lopa_fed.codegen.generate.generate (see README, On-device prompts)."
        )
    return task


def embedding_hash_of(meta: dict[str, Any], directory: str | os.PathLike[str]) -> str:
    """The frozen model's embedding hash recorded in ``export.json``; the frozen-model check needs it.

    Raises
    ------
    ExportFormatError
        ``frozen_model.embedding_sha256`` is missing or not a 64-digit hex string.
    """
    fm = meta.get("frozen_model")
    want = fm.get("embedding_sha256") if isinstance(fm, dict) else None
    if not isinstance(want, str) or len(want) != 64 or any(c not in "0123456789abcdef" for c in want):
        raise ExportFormatError(
            f"{Path(directory) / 'export.json'} lacks frozen_model.embedding_sha256 (got {want!r}), so the frozen "
            "model cannot be checked against the one the prompts were trained for; re-export with `lopa-fed export`"
        )
    return want


def matching_frozen_model(meta: dict[str, Any], override: str | None, directory: Path) -> FrozenModel:
    """The frozen model recorded in ``meta`` (or ``override``), refused unless its embeddings match."""
    want = embedding_hash_of(meta, directory)
    fm = meta.get("frozen_model") or {}
    name = override or name_for_identity(fm.get("identity", "default"))
    frozen = FrozenModel.load(name, fm.get("kind", "auto"))
    if frozen.embedding_hash() != want:
        raise ExportFormatError(
            f"frozen model {name!r} ({frozen.identity}) does not match the export: its embedding matrix hash "
            f"{frozen.embedding_hash()[:16]}… differs from {want[:16]}… recorded for {fm.get('identity')!r}. "
            "Pass --model with the model the prompts were trained for."
        )
    if frozen.d != int(meta["d"]):
        raise ExportFormatError(f"frozen model width d={frozen.d} does not match the export's d={meta['d']}")
    return frozen
