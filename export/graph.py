"""The module that is exported: token ids + mask → frozen encoder → pooling → heads → gate → Z.

::

    input_ids, attention_mask: B×L ──EncoderNet (frozen, pooled)──► e: B×h ──PromptGenerator──► Z: B×T×d

For PT the generator reads no features: the graph takes the batch size from ``input_ids``
and broadcasts Zs (``T = m``; ``T = 2m`` for ``lopa-concat``).
"""

from __future__ import annotations

import torch
from torch import nn

from lopa_fed.model import PromptedModel

from .errors import ExportError
from .runtime import TextInput

__all__ = ["PromptGraph", "build_graph", "example_inputs"]


class PromptGraph(nn.Module):
    """The exported graph: ``(input_ids: B×L, attention_mask: B×L) -> Z: B×T×d``.

    Parameters
    ----------
    generator : PromptGenerator
        The trained generator (put in eval mode: dropout off).
    encoder_net : nn.Module, optional
        :class:`lopa_fed.encoder.EncoderNet` (frozen encoder + pooling); ``None`` for PT,
        whose graph only reads the batch size of ``input_ids``.
    """

    def __init__(self, generator: nn.Module, encoder_net: nn.Module | None) -> None:
        super().__init__()
        self.generator = generator
        self.encoder_net = encoder_net

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``input_ids, attention_mask: B×L`` (int64) → ``Z: B×T×d`` (float32)."""
        if self.encoder_net is None:
            e = torch.zeros(input_ids.shape[0], 0)  # B×0: PT reads no features
        else:
            e = self.encoder_net(input_ids, attention_mask).float()  # B×h
        return self.generator(e)  # B×T×d


def build_graph(model: PromptedModel) -> PromptGraph:
    """The eval-mode :class:`PromptGraph` of ``model``'s prompt generator.

    Raises
    ------
    ExportError
        ``model``'s method has no prompt generator (``head``, ``lora``).
    """
    gen = model.prompt
    if gen is None:
        raise ExportError(f"method {model.config.method!r} has no prompt generator; nothing to export")
    net = model.encoder.net if gen.uses_features else None
    return PromptGraph(gen, net).eval()


def example_inputs(model: PromptedModel) -> dict[str, torch.Tensor]:
    """Tracing inputs ``input_ids``/``attention_mask``: 3×L int64 (B ≥ 2 and L ≥ 2 keep both axes dynamic)."""
    texts: list[TextInput] = [
        "an example sentence for tracing the graph",
        ("a premise of middling length", "and a hypothesis"),
        "short",
    ]
    if model.prompt is not None and model.prompt.uses_features:
        return model.encoder.tokenize(texts)
    ones = torch.ones(3, 4, dtype=torch.long)
    return {"input_ids": ones, "attention_mask": ones.clone()}
