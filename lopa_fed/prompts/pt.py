"""Prompt tuning (PT): ``Z = Zs``, the same m×d prompt for every input."""

from __future__ import annotations

import torch

from ..config import LoPAConfig
from .base import PromptGenerator


class PromptTuning(PromptGenerator):
    """``Z = Zs`` broadcast over the batch. Parameters: ``m·d``, all shared."""

    method = "pt"
    shared_prefixes = ("zs",)
    uses_features = False

    def __init__(self, config: LoPAConfig, h: int, d: int) -> None:
        super().__init__(config, h, d)
        self.zs = self._init_zs(config.m)

    @staticmethod
    def expected_num_parameters(config: LoPAConfig, h: int, d: int) -> int:
        return config.m * d

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        """``e: B×*`` (only its batch size is read) → ``Z: B×m×d``."""
        return self.zs.unsqueeze(0).expand(e.shape[0], -1, -1)
