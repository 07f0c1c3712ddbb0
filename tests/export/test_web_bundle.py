"""The web bundle in a real browser: headless Chromium (system binary) driven by puppeteer-core.

One tiny export (random tiny BERT encoder with MiniLM's real tokenizer, perturbed LoPA heads)
is made once per module with ``lopa-fed export --int8 --web``; a second bundle with the fp32
graph is written from the same export. Both are served from 127.0.0.1 and run in the browser on
real SST-2 and MRPC dev texts (pairs for MRPC) plus accents, CJK, emoji and over-long inputs:

* token ids equal :class:`export.runtime.PromptRuntime`'s;
* fp32 Z matches PyTorch within 1e-4;
* int8 Z matches Python onnxruntime's int8 Z within 1e-4;
* the demo page computes Z and gets a prediction from ``lopa-fed serve`` (CORS).

Without a browser (or node / the npm packages) the tests skip, saying how to install them;
with ``LOPA_FED_REQUIRE_BROWSER=1`` (``.ci/run``) that skip is a failure.
"""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
from export_testing import run_cli, run_cli_quiet, tiny_lopa_classifier

from export.parity import torch_prompts
from export.runtime import INT8_FILE, PromptRuntime, read_sidecar
from export.serve.process import start_server, stop_server
from export.web_browser import browser_missing, decode_items, run_demo, run_in_browser, serve_static
from export.web_bundle import NODE_MODULES_ENV, write_web_bundle
from lopa_fed.checkpoint import save_checkpoint
from lopa_fed.tasks import get_task

os.environ.setdefault("HF_HUB_OFFLINE", "1")

WRITTEN = [
    "Ça a été une expérience très différente, naïve et émouvante — über alles, señor!",
    "日本語のテキストと中文句子，还有한국어 문장도 있습니다。",
    "what a film 🤖🎉🔥 10/10 would watch again 👍🏽",
    "  spaces\tand\ttabs   and ZWJ 👩‍👩‍👧 family  ",
]


@pytest.fixture(scope="module")
def browser():
    """Skip (or fail under LOPA_FED_REQUIRE_BROWSER=1) when no headless Chromium / node / npm packages."""
    why = browser_missing()
    if why:
        if os.environ.get("LOPA_FED_REQUIRE_BROWSER") == "1":
            pytest.fail(f"LOPA_FED_REQUIRE_BROWSER=1 but the browser test cannot run: {why}")
        pytest.skip(why)


@pytest.fixture(scope="module")
def texts():
    """12 SST-2 dev sentences, 12 MRPC dev pairs, written accents/CJK/emoji texts, over-long inputs."""
    sst2, mrpc = get_task("sst2"), get_task("mrpc")
    out: list = [ex.text_a for ex in sst2.read("dev", limit=12)]
    out += [(ex.text_a, ex.text_b) for ex in mrpc.read("dev", limit=12)]
    out += WRITTEN + [(WRITTEN[0], WRITTEN[1])]
    long = " ".join(out[:8])  # > 128 tokens: longest-first truncation, single and pair
    out += [long, (long, out[12][0]), (out[13][1], long + " " + long)]
    return out


@pytest.fixture(scope="module")
def web(browser, tmp_path_factory):
    """``lopa-fed export --int8 --web`` of a tiny checkpoint, plus an fp32 bundle of the same export."""
    root = tmp_path_factory.mktemp("web")
    pm = tiny_lopa_classifier(root, perturb_seed=1)
    save_checkpoint(root / "ck", pm, task="sst2")
    out = root / "export"
    code, stdout = run_cli_quiet([
        "export", "--checkpoint", str(root / "ck"), "--out", str(out), "--int8", "--web",
        "--parity-examples", "16", "--agreement-examples", "16",
    ])
    assert code == 0, stdout
    assert "web bundle web/ (int8)" in stdout
    write_web_bundle(out, out / "web-fp32", int8=False)
    return pm, out


def test_bundle_is_self_contained_and_sized(web):
    _, out = web
    meta = read_sidecar(out)
    w = meta["web"]
    assert w["precision"] == "int8" and w["model_file"] == INT8_FILE
    files = {p.relative_to(out / "web").as_posix() for p in (out / "web").rglob("*") if p.is_file()}
    assert {"index.html", "lopa-prompt.js", "bundle.json", INT8_FILE, "tokenizer/tokenizer.json",
            "vendor/ort-wasm-simd-threaded.wasm", "vendor/ort.wasm.bundle.min.mjs",
            "vendor/transformers.web.min.js"} <= files
    assert w["bytes"] == sum(p.stat().st_size for p in (out / "web").rglob("*") if p.is_file())
    assert set(w["sizes"]) == {"fp32", "int8"} and w["sizes"]["int8"] == w["bytes"]
    assert w["sizes"]["fp32"] - w["sizes"]["int8"] == (
        meta["files"]["prompt_generator.onnx"]["bytes"] - meta["files"][INT8_FILE]["bytes"]
    )
    for name in ("lopa-prompt.js", "index.html"):  # everything from the bundle: no CDN, no hub
        code = (out / "web" / name).read_text(encoding="utf-8")
        urls = re.findall(r"https?://[^\s\"'<>]+", code)
        assert all(u.startswith("http://127.0.0.1") for u in urls), urls
    vendored = (out / "web" / "vendor" / "transformers.web.min.js").read_text(encoding="utf-8")
    assert 'from"onnxruntime-' not in vendored  # bare imports point at the bundled onnxruntime-web
    bundle = json.loads((out / "web" / "bundle.json").read_text())
    assert bundle["z_hash"] == meta["frozen_model"]["embedding_sha256"]


def test_missing_npm_packages_is_one_line_error(web, tmp_path, monkeypatch, capsys):
    _, out = web
    monkeypatch.setenv(NODE_MODULES_ENV, str(tmp_path / "nowhere"))
    ck = json.loads((out / "export.json").read_text())["source"]["checkpoint"]
    assert run_cli(["export", "--checkpoint", ck, "--out", str(tmp_path / "o"), "--web"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "npm ci" in err and "--web-modules" in err


def _compare(result, runtime: PromptRuntime, texts: list) -> None:
    assert len(result["items"]) == len(texts)
    for t, item in zip(texts, result["items"]):
        enc = runtime.encode([t])
        assert item["ids"] == enc["input_ids"][0].tolist(), t


def test_fp32_in_browser_equals_pytorch(web, texts):
    pm, out = web
    with serve_static(out) as base:
        res = run_in_browser(base + "web-fp32/", texts)
    assert res["threads"] == 1 and not res["isolated"]
    _compare(res, PromptRuntime(out), texts)
    z = np.concatenate(decode_items(res))
    ref = torch_prompts(pm, texts, batch_size=1)
    assert z.shape == ref.shape == (len(texts), pm.config.num_tokens, pm.prompt.d)
    assert np.abs(z - ref).max() <= 1e-4, np.abs(z - ref).max()


def test_int8_in_browser_equals_python_onnxruntime(web, texts):
    _, out = web
    with serve_static(out, isolated=True) as base:  # cross-origin isolated: 2 wasm threads
        res = run_in_browser(base + "web/", texts, threads=2)
    assert res["isolated"] and res["threads"] == 2
    rt = PromptRuntime(out, int8=True)
    _compare(res, rt, texts)
    z = np.concatenate(decode_items(res))
    ref = np.concatenate([rt.prompts([t]) for t in texts])
    assert np.abs(z - ref).max() <= 1e-4, np.abs(z - ref).max()


def test_demo_page_gets_a_prediction_from_the_model_host(web, texts):
    _, out = web
    with serve_static(out) as base:
        proc, host = start_server(out, "--cors-origin", base.rstrip("/"))
        try:
            shown = run_demo(base + "web/", texts[0], host=host)
        finally:
            stop_server(proc)
    assert "Z shape [1, 3, 16]" in shown["out"], shown
    assert "model host: " in shown["out"] and ("great" in shown["out"] or "terrible" in shown["out"]), shown
