"""The prompt-generator interface shared by every method.

A generator maps instance-encoder features ``e: B×h`` to a soft prompt
``Z: B×T×d`` (``T = m``, or ``2m`` for ``lopa-concat``). Every generator also
declares the *role* of each of its parameters:

* ``shared``  – the task part (e.g. ``Zs``), which federation may send;
* ``private`` – the instance part (e.g. the u/v heads), which stays on the client.

Federation, checkpoints and ONNX export all read :meth:`PromptGenerator.roles`.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from ..config import LoPAConfig

SHARED = "shared"
PRIVATE = "private"


def head(in_dim: int, hidden: int, out_dim: int, dropout: float) -> nn.Sequential:
    """``Dropout → Linear(in, hidden) → tanh → Linear(hidden, out)``, initialised as in the paper.

    Weights are drawn from N(0, 0.02²) and biases start at 0 (LOPA.md, step 3).
    """
    mlp = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, hidden), nn.Tanh(), nn.Linear(hidden, out_dim))
    for layer in (mlp[1], mlp[3]):
        nn.init.normal_(layer.weight, mean=0.0, std=0.02)
        nn.init.zeros_(layer.bias)
    return mlp


class PromptGenerator(nn.Module):
    """Base class: ``forward(e: B×h) -> Z: B×T×d``.

    Subclasses set :attr:`method`, :attr:`shared_prefixes` (parameter-name
    prefixes whose role is ``shared``; all others are ``private``) and
    :attr:`uses_features` (``False`` when the prompt ignores the input, as in PT).
    """

    method: ClassVar[str] = ""
    shared_prefixes: ClassVar[tuple[str, ...]] = ()
    uses_features: ClassVar[bool] = True

    def __init__(self, config: LoPAConfig, h: int, d: int) -> None:
        super().__init__()
        self.config = config
        self.h = int(h)
        self.d = int(d)

    @property
    def num_tokens(self) -> int:
        """T, the number of soft tokens this generator emits."""
        return self.config.num_tokens

    def roles(self) -> dict[str, str]:
        """Map every parameter name to ``"shared"`` or ``"private"``."""
        return {
            name: SHARED if name.startswith(self.shared_prefixes) else PRIVATE
            for name, _ in self.named_parameters()
        }

    def num_parameters(self) -> int:
        """Number of trainable scalars in the generator."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    @staticmethod
    def expected_num_parameters(config: LoPAConfig, h: int, d: int) -> int:
        """The closed-form parameter count from LOPA.md for this method."""
        raise NotImplementedError

    def _init_zs(self, m: int) -> nn.Parameter:
        """Task part ``Zs: m×d`` drawn from N(0, zs_init_std²) (the authors use N(0, 1))."""
        return nn.Parameter(torch.randn(m, self.d) * self.config.zs_init_std)

    def forward(self, e: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """Map ``e: B×h`` (or ``B×0`` when :attr:`uses_features` is False) to ``Z: B×T×d``."""
        raise NotImplementedError
