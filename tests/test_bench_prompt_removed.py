"""``bench/prompt_removed.py``: the same trained model scored with and without its prompt (tiny random models)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import prompt_removed  # noqa: E402
from lopa_fed.config import LoPAConfig  # noqa: E402
from lopa_fed.data import encode_examples  # noqa: E402
from lopa_fed.model import PromptedModel  # noqa: E402
from lopa_fed.tasks import Example, get_task  # noqa: E402

SST2 = get_task("sst2")


@pytest.mark.parametrize("method", ["pt", "lopa"])
def test_prompt_removed_is_the_head_on_the_bare_input_and_restores_the_prompt(method, tiny_frozen, tiny_encoder) -> None:
    torch.manual_seed(0)
    net = PromptedModel(tiny_frozen, LoPAConfig(method=method, m=4, r=2, hidden=8), 2,
                        encoder=tiny_encoder if method == "lopa" else None).eval()
    data = encode_examples([Example("a fine film", None, 1, "a"), Example("a dull mess", None, 0, "b")], SST2,
                           tiny_frozen, 32)
    batch = data.collate(data.items)
    with torch.no_grad():
        prompted = net(batch).logits
        with prompt_removed.prompt_removed(net):
            bare = net(batch).logits
        restored = net(batch).logits
        by_hand = net.head(tiny_frozen(None, batch["input_ids"], batch["attention_mask"]).pooled)
    assert torch.allclose(bare, by_hand)  # exactly: frozen model on x alone, then the trained head
    assert not torch.allclose(bare, prompted)
    assert torch.equal(restored, prompted) and net.prompt is not None


def test_points_and_the_one_line_error(tmp_path: Path) -> None:
    f = tmp_path / "q.json"
    f.write_text(json.dumps({"summary": {"main": {"sst2": {"pt": {"lr": 0.01}, "head": {"lr": 0.03}}}}}))
    assert prompt_removed.points(f, ("pt", "head")) == {"pt": 0.01, "head": 0.03}
    with pytest.raises(ValueError, match=r"^--points-from .*q\.json: no SST-2 lr for each of pt, lopa"):
        prompt_removed.points(f, ("pt", "lopa"))


def test_summary_and_render_report_the_drop_and_the_causal_contrast() -> None:
    runs = [{"method": "pt", "lr": 0.01, "seed": s, "trainable_params": 4610, "steps": 250, "dev": d, "dev_prompt_removed": r}
            for s, (d, r) in enumerate([(80.0, 79.0), (78.0, 78.0)])]
    runs.append({"method": "head", "lr": 0.01, "seed": 0, "trainable_params": 770, "steps": 250, "dev": 77.0,
                 "dev_prompt_removed": 77.0})
    s = prompt_removed.summarise(runs)
    assert s["pt"]["dev"] == pytest.approx(79.0) and s["pt"]["removed"] == pytest.approx(78.5)
    assert s["pt"]["drop"] == [1.0, 0.0] and s["head"]["n"] == 1
    text = prompt_removed.render(s, {"file": "c.json", "zero_shot": 51.5, "pt": {"dev": 83.8, "dev_std": 2.5, "n": 3}})
    assert "| PT | 4,610 | 79.0 ± 1.4 | 78.5 ± 0.7 | +0.5 | 2 |" in text
    assert "PT: 83.8 with its prompt → 51.5 removed (+32.3)" in text


def test_unknown_method_is_a_one_line_error(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as e:
        prompt_removed.main(["--methods", "pt,lora", "--out-dir", str(tmp_path)])
    assert e.value.code == 2
    assert "--methods: unknown lora" in capsys.readouterr().err.strip().splitlines()[-1]
    assert list(tmp_path.iterdir()) == []
