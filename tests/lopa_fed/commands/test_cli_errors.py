"""One way to fail: every subcommand turns a user mistake into one line on stderr and exit code 2.

Each case runs the real ``lopa-fed`` entry point in-process (the same ``main`` the console
script calls) and checks the exit code, that stderr is exactly one ``lopa-fed: error:`` line
naming the problem, and that files already on disk are left byte-identical.
"""

from __future__ import annotations

import pytest

from lopa_fed import cli

CASES = [
    # train / evaluate (lopa_fed.commands)
    (["train", "--task", "nope", "--out", "{tmp}/r"], "unknown task 'nope'"),
    (["train", "--task", "sst2", "--test-limit", "0", "--out", "{tmp}/r"], "--test-limit must be >= 1, got 0"),
    (["train", "--task", "sst2", "--val-fraction", "1.5", "--out", "{tmp}/r"], "--val-fraction must be in [0, 1)"),
    (["train", "--task", "sst2", "--lr", "inf", "--out", "{tmp}/r"], "--lr must be a finite number > 0"),
    (["train", "--task", "sst2", "--m", "0", "--out", "{tmp}/r"], "m must be a positive integer"),
    (["train", "--task", "mbpp", "--method", "head", "--out", "{tmp}/r"], "classification head"),
    (["train", "--task", "sst2", "--data-dir", "{tmp}/none", "--out", "{tmp}/r"], "does not exist"),
    (["train", "--task", "sst2", "--out", "{tmp}/held"], "already holds a run (metrics.json); pass --force"),
    (["evaluate", "--checkpoint", "{tmp}/none"], "is not a lopa-fed checkpoint: config.json is missing"),
    (["evaluate", "--checkpoint", "{tmp}/held", "--limit", "0"], "--limit must be >= 1"),
    # simulate / deploy-local (server.cli): refused before Flower starts
    (["simulate", "--num-clients", "2", "--min-nodes", "5", "--out", "{tmp}/r"], "--min-nodes 5 is larger than the number of clients 2"),
    (["simulate", "--set", "foo", "--out", "{tmp}/r"], "--set expects KEY=VALUE, got 'foo'"),
    (["simulate", "--set", "locl-steps=3", "--out", "{tmp}/r"], "unknown run-config key 'locl-steps'; did you mean 'local-steps'?"),
    (["simulate", "--cpus-per-client", "0", "--out", "{tmp}/r"], "--cpus-per-client must be > 0, got 0"),
    (["deploy-local", "--nodes", "0", "--out", "{tmp}/r"], "need at least one client, got 0"),
    # export / infer (export.cli)
    (["export", "--checkpoint", "{tmp}/none", "--out", "{tmp}/r"], "is not a lopa-fed checkpoint"),
    (["infer", "--prompt-dir", "{tmp}/none", "--text", "x"], "export directory {tmp}/none does not exist"),
    (["infer", "--prompt-dir", "{tmp}/none", "--text", ""], "--text number 1 is empty"),
    (["infer", "--prompt-dir", "{tmp}/none", "--text", "x", "--batch-size", "-1"], "--batch-size must be >= 1, got -1"),
    # serve (export.serve)
    (["serve", "--prompt-dir", "{tmp}/none", "--port", "0"], "--port must be in [1, 65535], got 0"),
    (["serve", "--prompt-dir", "{tmp}/none"], "export directory {tmp}/none does not exist"),
]


@pytest.fixture()
def held(tmp_path):
    """A directory that already holds a run: it must survive every refusal unchanged."""
    (tmp_path / "held").mkdir()
    (tmp_path / "held" / "metrics.json").write_text('{"keep": true}')
    return tmp_path / "held" / "metrics.json"


@pytest.mark.parametrize("argv,needle", CASES, ids=[" ".join(a[:3]) for a, _ in CASES])
def test_user_errors_are_one_line_and_exit_2(tmp_path, held, capsys, argv, needle):
    rc = cli.main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("lopa-fed: error: ") and needle.replace("{tmp}", str(tmp_path)) in err[0], err
    assert held.read_text() == '{"keep": true}'
    assert not (tmp_path / "r").exists()


def test_no_command_prints_help_and_exits_2(capsys):
    assert cli.main([]) == 2
    assert "COMMAND" in capsys.readouterr().err
