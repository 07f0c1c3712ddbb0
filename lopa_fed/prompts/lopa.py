"""Low-Rank Prompt Adaptation (LoPA) and its function-encoding ablations.

``Z = Zs ⊙ σ(u vᵀ)`` where ``u: m×r`` and ``v: d×r`` come from two heads on the
frozen instance encoder's features (LOPA.md). Ablations replace the gate:

=============  ======================
method         Z
=============  ======================
lopa           Zs ⊙ σ(Z_I)
lopa-add       Zs + Z_I
lopa-max       max(Zs, Z_I)
lopa-concat    [Zs ; Z_I]  (2m tokens)
lopa-instance  σ(Z_I)      (no Zs)
=============  ======================
"""

from __future__ import annotations

import torch

from ..config import LoPAConfig
from .base import PromptGenerator, head


class LoPA(PromptGenerator):
    """LoPA with the paper's gate. Zs is shared; the u/v heads are private.

    Parameters: ``m·d + 2(h·h′ + h′) + (h′·m·r + m·r) + (h′·d·r + d·r)``.
    """

    method = "lopa"
    shared_prefixes = ("zs",)
    has_zs = True

    def __init__(self, config: LoPAConfig, h: int, d: int) -> None:
        super().__init__(config, h, d)
        m, r, hh = config.m, config.r, config.hidden
        if self.has_zs:
            self.zs = self._init_zs(m)
        self.u_head = head(h, hh, m * r, config.dropout)
        self.v_head = head(h, hh, d * r, config.dropout)

    @classmethod
    def expected_num_parameters(cls, config: LoPAConfig, h: int, d: int) -> int:  # type: ignore[override]
        m, r, hh = config.m, config.r, config.hidden
        zs = m * d if cls.has_zs else 0
        return zs + 2 * (h * hh + hh) + (hh * m * r + m * r) + (hh * d * r + d * r)

    def instance_part(self, e: torch.Tensor) -> torch.Tensor:
        """``Z_I = u vᵀ``: ``e: B×h`` → ``B×m×d``."""
        b, m, r = e.shape[0], self.config.m, self.config.r
        u = self.u_head(e).view(b, m, r)
        v = self.v_head(e).view(b, self.d, r)
        return torch.bmm(u, v.transpose(1, 2))

    def combine(self, zs: torch.Tensor, zi: torch.Tensor) -> torch.Tensor:
        """The encoding function ``Z = f(Zs: 1×m×d, Z_I: B×m×d)``."""
        return zs * torch.sigmoid(zi)

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        """``e: B×h`` → ``Z: B×T×d``."""
        zi = self.instance_part(e)
        zs = self.zs.unsqueeze(0) if self.has_zs else None
        return self.combine(zs, zi)


class LoPAAdd(LoPA):
    """Ablation: ``Z = Zs + Z_I``."""

    method = "lopa-add"

    def combine(self, zs: torch.Tensor, zi: torch.Tensor) -> torch.Tensor:
        return zs + zi


class LoPAMax(LoPA):
    """Ablation: ``Z = max(Zs, Z_I)`` elementwise."""

    method = "lopa-max"

    def combine(self, zs: torch.Tensor, zi: torch.Tensor) -> torch.Tensor:
        return torch.maximum(zs.expand_as(zi), zi)


class LoPAConcat(LoPA):
    """Ablation: ``Z = [Zs ; Z_I]``, which gives 2m soft tokens."""

    method = "lopa-concat"

    def combine(self, zs: torch.Tensor, zi: torch.Tensor) -> torch.Tensor:
        return torch.cat([zs.expand_as(zi), zi], dim=1)


class LoPAInstanceOnly(LoPA):
    """Ablation: ``Z = σ(Z_I)``; no task part, so nothing is shared."""

    method = "lopa-instance"
    shared_prefixes = ()
    has_zs = False

    def combine(self, zs: torch.Tensor | None, zi: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(zi)
