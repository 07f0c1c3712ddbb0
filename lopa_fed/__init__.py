"""lopa-fed: federated, on-device personalisation of frozen foundation models with LoPA.

The core library: prompt generators (:mod:`lopa_fed.prompts`), frozen models
(:mod:`lopa_fed.backbone`), the frozen instance encoder and its feature cache
(:mod:`lopa_fed.encoder`), GLUE and code tasks behind one interface
(:mod:`lopa_fed.tasks`), code generation and pass@1 (:mod:`lopa_fed.codegen`),
single-party training and checkpoints, and the federation contract
(:mod:`lopa_fed.federation`). It imports neither Flower nor ONNX, nor the
packages that stand on it (``clients``, ``server``, ``export``).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "LoPAConfig": "config",
    "TrainConfig": "config",
    "FrozenModel": "backbone",
    "InstanceEncoder": "encoder",
    "PromptedModel": "model",
    "build_model": "model",
    "build_generator": "prompts",
    "get_task": "tasks",
    "load_splits": "data",
    "encode_examples": "data",
    "fit": "train",
    "evaluate": "train",
    "save_checkpoint": "checkpoint",
    "load_checkpoint": "checkpoint",
    "load_model": "checkpoint",
    "LoPAError": "errors",
}


def __getattr__(name: str) -> Any:
    """Import public names lazily, so ``import lopa_fed`` stays cheap."""
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'lopa_fed' has no attribute {name!r}")


__all__ = [*_EXPORTS, "__version__"]
