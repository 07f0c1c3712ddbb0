"""``lopa-fed simulate --tiers``: the tiers reach the run config and give the number of clients (issue 15)."""

from __future__ import annotations

import argparse
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from lopa_fed.errors import ConfigError  # noqa: E402
from server.cli import launch_plan, register  # noqa: E402


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="lopa-fed")
    register(parser.add_subparsers())
    return parser.parse_args(list(argv))


def test_tiers_set_the_fleet(tmp_path):
    tiers = "minilm:r=4:n=2,minilm-l3:r=1:n=1,static:r=1:hidden=64:n=2"
    plan = launch_plan(_args("simulate", "--tiers", tiers, "--out", str(tmp_path / "a")), "simulate")
    assert plan.clients == 5 and plan.run_config["tiers"] == tiers and plan.run_config["min-nodes"] == 5
    assert plan.settings.tiers == tiers
    plan = launch_plan(_args("deploy-local", "--tiers", "static:n=3", "--out", str(tmp_path / "b")), "deploy-local")
    assert plan.clients == 3
    assert launch_plan(_args("simulate", "--out", str(tmp_path / "c")), "simulate").clients == 2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--tiers", "minilm:n=2,static:n=2", "--num-clients", "3"], "assigns 4 clients but 3"),
        (["--tiers", "tiny-bert:n=2"], "unknown encoder tier 'tiny-bert'"),
        (["--tiers", "minilm:n=1,static:n=1", "--federate", "all"], "federate = zs or none"),
    ],
)
def test_bad_tiers_are_refused_before_flower_starts(tmp_path, argv, message):
    with pytest.raises(ConfigError, match=message):
        launch_plan(_args("simulate", *argv, "--out", str(tmp_path / "x")), "simulate")
    assert not (tmp_path / "x").exists()
