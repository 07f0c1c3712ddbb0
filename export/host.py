"""The model host: run the frozen model on ``[Z ; x]`` with a ``Z`` computed elsewhere.

The host keeps only task-level state: the frozen model and, for a ``classifier``
frozen model, the task's classification head (a *shared* tensor, written to
``host.safetensors`` by the exporter). It stores nothing per user: every request
carries its own soft prompt ``Z: B×T×d`` (numpy or torch), computed on the device
by :class:`export.runtime.PromptRuntime`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from lopa_fed import weights
from lopa_fed.backbone import FrozenModel
from lopa_fed.checkpoint import load_tensors
from lopa_fed.code_tasks import is_code_task
from lopa_fed.config import LoPAConfig
from lopa_fed.data import EncodedDataset, encode_examples
from lopa_fed.model import PromptedModel
from lopa_fed.tasks import Example, Task, get_task

from .runtime import ExportFormatError, TextInput, read_sidecar

HOST_FILE = "host.safetensors"

#: ``enc_texts`` (a batch of ``(text_a, text_b)``) → ``Z: B×T×d`` (numpy or torch), or ``None``
#: to let the model's own generator compute it (the PyTorch path).
PromptFn = Callable[[list], "np.ndarray | torch.Tensor | None"]


def name_for_identity(identity: str) -> str:
    """A name :func:`lopa_fed.weights.resolve` accepts for a recorded model identity.

    Checkpoints and exports record identities such as ``sentence-transformers/all-MiniLM-L6-v2``,
    which offline resolution does not accept; the packaged aliases are matched first.
    """
    for alias in ("default", "smollm2"):
        try:
            if weights.resolve(alias).identity == identity:
                return alias
        except (weights.ModelNotFoundError, OSError):
            continue
    return identity


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
            raise ValueError(
                "this task has no class predictions (answer-token LM); infer supports classification tasks"
            )
        logits.append(out.logits.float().numpy())
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
            If the frozen model's embedding hash differs from the one recorded at export time
            (the prompts were trained for another model), or ``host.safetensors`` is missing.
        """
        directory = Path(directory)
        meta = read_sidecar(directory)
        fm = meta.get("frozen_model") or {}
        task_name = meta.get("task")
        if not task_name:
            raise ExportFormatError(
                f"{directory}/export.json records no task; infer needs it to encode the text"
            )
        if is_code_task(task_name):
            raise ExportFormatError(
                f"{directory} holds a prompt generator for the code task {task_name!r}; `lopa-fed infer` classifies "
                "GLUE text. For generation, compute Z with export.runtime.PromptRuntime(dir).prompts([prompt]) and "
                "pass it as the prefix to lopa_fed.generate.generate (see README, On-device prompts)."
            )
        name = model or name_for_identity(fm.get("identity", "default"))
        frozen = FrozenModel.load(name, fm.get("kind", "auto"))
        want = fm.get("embedding_sha256")
        if want and frozen.embedding_hash() != want:
            raise ExportFormatError(
                f"frozen model {name!r} ({frozen.identity}) does not match the export: its embedding matrix hash "
                f"{frozen.embedding_hash()[:16]}… differs from {want[:16]}… recorded for {fm.get('identity')!r}. "
                "Pass --model with the model the prompts were trained for."
            )
        if frozen.d != int(meta["d"]):
            raise ExportFormatError(
                f"frozen model width d={frozen.d} does not match the export's d={meta['d']}"
            )
        task = get_task(task_name)
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
        """Encode raw texts (or ``(a, b)`` pairs) for the frozen model (labels are dummies)."""
        if len(texts) == 0:
            raise ValueError("no texts to classify")
        examples = []
        for i, t in enumerate(texts):
            a, b = (t, None) if isinstance(t, str) else (t[0], t[1])
            if self.task.is_pair and not b:
                raise ValueError(
                    f"task {self.task.name} takes sentence pairs; text {i} has no second sentence"
                )
            examples.append(Example(a, b if self.task.is_pair else None, 0, f"input/{i}"))
        return encode_examples(examples, self.task, self.model.frozen, self.max_length)

    def predict(self, data: EncodedDataset, prompt_fn: PromptFn, batch_size: int = 32) -> np.ndarray:
        """Predicted class indices ``(N,)`` with ``Z`` from ``prompt_fn``."""
        return predict_with_prompts(self.model, data, prompt_fn, batch_size)

    def label_name(self, index: int) -> str:
        """The verbalizer word of class ``index``."""
        return self.task.label_words[int(index)]
