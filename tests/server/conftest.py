"""Fixtures shared by the federation tests that launch real runs (simulation and deployment)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

#: The smallest training that still exercises a real round: 2 local steps of 8 real examples
#: from a 120-example pool per client, 8 test examples each.
TINY_TRAINING = {"local-steps": 2, "batch-size": 8, "pool-size": 120, "max-test-examples": 8}
#: What a 2-client, 2-round simulation adds to it.
TINY_SIMULATION = {"num-server-rounds": 2, "min-nodes": 2, "round-timeout": 300.0}


@pytest.fixture
def tiny_run_config() -> Callable[..., dict]:
    """A factory of fresh run-config dicts: ``tiny_run_config(extra, simulation=True)``.

    ``extra`` (run-config keys, hyphenated) overrides the tiny defaults; ``simulation=False``
    leaves out the round, node and timeout keys for tests that set their own.
    """

    def make(extra: dict | None = None, simulation: bool = True) -> dict:
        return {**TINY_TRAINING, **(TINY_SIMULATION if simulation else {}), **(extra or {})}

    return make
