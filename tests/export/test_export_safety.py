"""An export whose ``export.json`` lacks the frozen model's embedding hash is refused (issue 14 A, defect 7).

Without ``frozen_model.embedding_sha256`` the host cannot tell whether the frozen model it
loads is the one the prompts were trained for, so ``infer`` (local and ``--host``) and
``serve`` refuse the export with one line naming the key, and leave its files as they were.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from export_testing import perturb

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from export.pipeline import export_checkpoint  # noqa: E402
from lopa_fed.checkpoint import save_checkpoint  # noqa: E402
from lopa_fed.cli import main  # noqa: E402
from lopa_fed.config import LoPAConfig  # noqa: E402
from lopa_fed.model import build_model  # noqa: E402
from lopa_fed.tasks import get_task  # noqa: E402

pytestmark = pytest.mark.integration
LOPA_FED = Path(sys.executable).parent / "lopa-fed"


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    """A real MiniLM LoPA export."""
    root = tmp_path_factory.mktemp("safety")
    pm = build_model(get_task("sst2"), LoPAConfig(method="lopa", m=4, r=2, hidden=32), seed=0)
    perturb(pm, seed=1)
    save_checkpoint(root / "ck", pm, task="sst2")
    export_checkpoint(root / "ck", root / "export", parity_examples=2, agreement_examples=4)
    return root / "export"


@pytest.fixture()
def without_hash(export_dir, tmp_path):
    """A copy of the export whose export.json has no ``frozen_model.embedding_sha256``."""
    out = tmp_path / "export"
    shutil.copytree(export_dir, out)
    meta = json.loads((out / "export.json").read_text())
    del meta["frozen_model"]["embedding_sha256"]
    (out / "export.json").write_text(json.dumps(meta, indent=2))
    return out


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _message(out: Path) -> str:
    return (
        f"lopa-fed: error: {out / 'export.json'} lacks frozen_model.embedding_sha256 (got None), so the frozen model "
        "cannot be checked against the one the prompts were trained for; re-export with `lopa-fed export`"
    )


@pytest.mark.parametrize("remote", [False, True])
def test_infer_refuses_an_export_without_the_embedding_hash(without_hash, capsys, remote):
    before = snapshot(without_hash)
    extra = ["--host", "http://127.0.0.1:9"] if remote else []  # refused before anything is sent
    code = main(["infer", "--prompt-dir", str(without_hash), "--text", "a fine film", *extra])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "skipping the" not in line]
    assert code == 2 and err == [_message(without_hash)]
    assert snapshot(without_hash) == before


def test_serve_refuses_an_export_without_the_embedding_hash(without_hash):
    if not LOPA_FED.is_file():
        pytest.skip(f"{LOPA_FED} is not installed")
    before = snapshot(without_hash)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    res = subprocess.run(
        [str(LOPA_FED), "serve", "--prompt-dir", str(without_hash), "--port", "18765"],
        capture_output=True, text=True, env=env, timeout=180,
    )
    err = [line for line in res.stderr.splitlines() if line.strip() and "skipping the" not in line]
    assert res.returncode == 2 and err == [_message(without_hash)], res.stderr
    assert "lopa-fed serve:" not in res.stdout  # never started listening
    assert snapshot(without_hash) == before


def test_the_intact_export_still_loads(export_dir):
    from export.host import ModelHost

    assert ModelHost.from_export(export_dir).task.name == "sst2"
