"""``lopa-fed simulate`` / ``deploy-local``: options become a checked run config, bad ones fail before Flower starts.

The refusal tests run the real command (``.venv/bin/lopa-fed``) in a subprocess and check
the exit code (2), the one-line message on stderr, and that nothing was launched: no
``flwr-home``, no logs, and an exit within seconds.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from lopa_fed.errors import ConfigError  # noqa: E402
from lopa_fed.federation import SCHEMA, FedSettings  # noqa: E402
from server.cli import _OPTIONS, launch_plan, register, run_config_from_args  # noqa: E402

LOPA_FED = Path(sys.executable).parent / "lopa-fed"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lopa-fed")
    register(parser.add_subparsers())
    return parser


def test_cli_options_become_run_config():
    args = _parser().parse_args(
        ["simulate", "--num-clients", "3", "--rounds", "2", "--federate", "none", "--partition", "dirichlet",
         "--alpha", "0.5", "--out", "x", "--set", "trim-beta=0.1", "--set", 'strategy="fedmedian"']
    )
    cfg = run_config_from_args(args, 3)
    assert cfg == {"num-server-rounds": 2, "federate": "none", "partitioner": "dirichlet", "alpha": 0.5,
                   "trim-beta": 0.1, "strategy": "fedmedian", "min-nodes": 3}
    bad = _parser().parse_args(["deploy-local", "--nodes", "2", "--min-nodes", "3", "--out", "x"])
    with pytest.raises(ValueError, match="min-nodes"):
        run_config_from_args(bad, 2)


def test_every_option_is_a_run_config_key():
    assert set(_OPTIONS.values()) <= set(SCHEMA.keys)


def test_code_task_cli_uses_the_papers_rank():
    args = _parser().parse_args(["simulate", "--task", "mbpp", "--max-new-tokens", "32", "--out", "x"])
    cfg = run_config_from_args(args, 2)
    # r is no longer injected by the CLI: r = 0 in the run config means the task's rank, in the apps too
    assert cfg == {"task": "mbpp", "max-new-tokens": 32, "min-nodes": 2}
    assert FedSettings.from_run_config(cfg).lopa.r == 1
    args = _parser().parse_args(["simulate", "--task", "mbpp", "--set", "r=2", "--out", "x"])
    assert run_config_from_args(args, 2)["r"] == 2


def test_set_values_are_typed_by_the_schema():
    args = _parser().parse_args(
        ["simulate", "--out", "x", "--set", "lora-r=8", "--set", "dropout=0.2", "--set", "lr=0", "--set", "resume=true"]
    )
    cfg = run_config_from_args(args, 2)
    assert cfg["lora-r"] == 8 and cfg["dropout"] == 0.2 and cfg["resume"] is True
    assert cfg["lr"] == 0.0 and type(cfg["lr"]) is float  # same TOML type as the pyproject default


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--set", "locl-steps=3"], "unknown run-config key 'locl-steps'; did you mean 'local-steps'?"),
        (["--set", "bogus-key=3"], "unknown run-config key 'bogus-key'"),
        (["--set", "foo"], "--set expects KEY=VALUE, got 'foo'"),
        (["--num-clients", "2", "--min-nodes", "5"], "--min-nodes 5 is larger than the number of clients 2"),
        (["--cpus-per-client", "0"], "--cpus-per-client must be > 0, got 0"),
        (["--num-clients", "0"], "need at least one client, got 0"),
        (["--set", "dropout=2"], "dropout must be in [0, 1)"),
        (["--set", "local-steps=many"], "local-steps: cannot use 'many' as int"),
    ],
)
def test_launch_plan_refuses_bad_options(argv, message):
    args = _parser().parse_args(["simulate", "--out", "x", *argv])
    with pytest.raises(ConfigError) as info:
        launch_plan(args, "simulate")
    assert message in str(info.value) and "\n" not in str(info.value)


def test_deploy_local_plan_refuses_too_few_nodes():
    with pytest.raises(ConfigError, match="at least one client"):
        launch_plan(_parser().parse_args(["deploy-local", "--nodes", "0", "--out", "x"]), "deploy-local")


def _run(argv: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)


def _error_lines(stderr: str) -> list[str]:
    # the lopa-fed parser may also note optional command groups it skipped; those are not errors
    return [line for line in stderr.splitlines() if line.strip() and "skipping the" not in line]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["simulate", "--set", "locl-steps=3"], "unknown run-config key 'locl-steps'; did you mean 'local-steps'?"),
        (["simulate", "--num-clients", "2", "--min-nodes", "5"], "--min-nodes 5 is larger than the number of clients 2"),
        (["simulate", "--set", "foo"], "--set expects KEY=VALUE, got 'foo'"),
        (["simulate", "--cpus-per-client", "0"], "--cpus-per-client must be > 0"),
        (["deploy-local", "--set", "lora_r=4"], "unknown run-config key 'lora_r'; did you mean 'lora-r'?"),
    ],
)
def test_lopa_fed_refuses_before_flower_starts(tmp_path, argv, message):
    if not LOPA_FED.is_file():
        pytest.skip(f"{LOPA_FED} is not installed")
    out = tmp_path / "run"
    t0 = time.time()
    res = _run([str(LOPA_FED), *argv, "--out", str(out)], tmp_path)
    assert res.returncode == 2, res.stdout + res.stderr
    lines = _error_lines(res.stderr)
    assert len(lines) == 1 and message in lines[0], res.stderr
    assert "Traceback" not in res.stderr
    assert not out.exists()  # no flwr-home, no logs: Flower never started
    assert time.time() - t0 < 60


def test_standalone_server_cli_refuses_the_same_way(tmp_path):
    out = tmp_path / "run"
    res = _run([sys.executable, "-m", "server.cli", "simulate", "--set", "locl-steps=3", "--out", str(out)], tmp_path)
    assert res.returncode == 2, res.stderr
    assert _error_lines(res.stderr) == ["error: unknown run-config key 'locl-steps'; did you mean 'local-steps'?"]
    assert not out.exists()
