"""Prompt generators: each maps encoder features ``e: B×h`` to ``Z: B×T×d``.

Use :func:`build_generator` with a :class:`~lopa_fed.config.LoPAConfig`.
"""

from __future__ import annotations

from ..config import ConfigError, LoPAConfig
from .base import PRIVATE, SHARED, PromptGenerator
from .idpg import IDPG
from .lopa import LoPA, LoPAAdd, LoPAConcat, LoPAInstanceOnly, LoPAMax
from .pt import PromptTuning

GENERATORS: dict[str, type[PromptGenerator]] = {
    cls.method: cls for cls in (PromptTuning, IDPG, LoPA, LoPAAdd, LoPAMax, LoPAConcat, LoPAInstanceOnly)
}


def build_generator(config: LoPAConfig, h: int, d: int) -> PromptGenerator:
    """Build the generator for ``config.method`` with encoder width ``h`` and model width ``d``."""
    try:
        cls = GENERATORS[config.method]
    except KeyError:
        raise ConfigError(
            f"method {config.method!r} has no prompt generator; generators exist for {', '.join(GENERATORS)}"
        ) from None
    return cls(config, h, d)


def expected_num_parameters(config: LoPAConfig, h: int, d: int) -> int:
    """Closed-form parameter count (LOPA.md) for ``config.method``."""
    return GENERATORS[config.method].expected_num_parameters(config, h, d)


__all__ = [
    "GENERATORS",
    "IDPG",
    "PRIVATE",
    "SHARED",
    "LoPA",
    "LoPAAdd",
    "LoPAConcat",
    "LoPAInstanceOnly",
    "LoPAMax",
    "PromptGenerator",
    "PromptTuning",
    "build_generator",
    "expected_num_parameters",
]
