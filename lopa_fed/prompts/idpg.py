"""Instance-dependent prompt generation (S-IDPG): ``Z = head(Enc(x))``, no Zs."""

from __future__ import annotations

import torch

from ..config import LoPAConfig
from .base import PromptGenerator, head


class IDPG(PromptGenerator):
    """``Z = Linear(h′, m·d)(tanh(Linear(h, h′)(e)))`` reshaped to m×d.

    Parameters: ``h·h′ + h′ + h′·m·d + m·d``. The whole generator is task-level
    (it has no per-user part), so every parameter is ``shared``.
    """

    method = "idpg"
    shared_prefixes = ("generator",)

    def __init__(self, config: LoPAConfig, h: int, d: int) -> None:
        super().__init__(config, h, d)
        self.generator = head(h, config.hidden, config.m * d, config.dropout)

    @staticmethod
    def expected_num_parameters(config: LoPAConfig, h: int, d: int) -> int:
        hh, m = config.hidden, config.m
        return h * hh + hh + hh * m * d + m * d

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        """``e: B×h`` → ``Z: B×m×d``."""
        return self.generator(e).view(e.shape[0], self.config.m, self.d)
