"""``lopa-fed serve``: a real uvicorn process serving a real MiniLM export, driven by a real HTTP client.

One module-scoped server answers every test: parity with the in-process host, cross-user
micro-batching, every bad request (and that the host keeps serving), no per-user memory, an
API key, and a clean SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import signal
import statistics

import httpx
import numpy as np
import pytest
from export_testing import perturb

from export.host import ModelHost, predict_logits
from export.pipeline import export_checkpoint
from export.runtime import PromptRuntime, read_sidecar
from export.serve.codec import encode_z
from export.serve.process import start_server
from lopa_fed.checkpoint import save_checkpoint
from lopa_fed.config import LoPAConfig
from lopa_fed.model import build_model
from lopa_fed.tasks import get_task

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    """A LoPA prompt generator on the real MiniLM, with non-trivial weights, exported with the real exporter."""
    root = tmp_path_factory.mktemp("serve")
    pm = build_model(get_task("sst2"), LoPAConfig(method="lopa", m=10, r=4, hidden=64), seed=0)
    perturb(pm, seed=1)
    save_checkpoint(root / "ck", pm, task="sst2")
    export_checkpoint(root / "ck", root / "export", parity_examples=4, agreement_examples=8)
    return root / "export"


def _start(export_dir, *extra: str):
    return start_server(export_dir, *extra)


@pytest.fixture(scope="module")
def server(export_dir):
    proc, url = _start(export_dir, "--max-batch", "64", "--max-wait-ms", "100", "--threads", "1")
    yield proc, url
    if proc.poll() is None:
        proc.kill()


@pytest.fixture(scope="module")
def texts():
    return [ex.text_a for ex in get_task("sst2").read("dev", limit=8)]


def _rss_kb(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_answers_equal_the_in_process_host(server, export_dir, texts):
    _, url = server
    z = PromptRuntime(export_dir, threads=1).prompts(texts)  # N×T×d, computed "on the device"
    host = ModelHost.from_export(export_dir)
    logits = predict_logits(host.model, host.encode(texts), lambda _t: z, batch_size=len(texts))
    want = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    for i, (t, zi) in enumerate(zip(texts, z)):
        r = httpx.post(url + "/v1/classify", json={"text": t, "z": encode_z(zi)}, timeout=60).json()
        assert r["label"] == host.label_name(int(want[i].argmax()))
        np.testing.assert_allclose(r["probabilities"], want[i], atol=1e-5)
    card = httpx.get(url + "/v1/model").json()
    meta = read_sidecar(export_dir)
    assert card["embedding_sha256"] == meta["frozen_model"]["embedding_sha256"]
    assert (card["num_tokens"], card["d"], card["labels"], card["task"]) == (10, 384, ["terrible", "great"], "sst2")
    assert "/v1/classify" in httpx.get(url + "/openapi.json").json()["paths"]


def test_concurrent_users_share_forward_passes(server, texts):
    _, url = server
    rng = np.random.default_rng(0)
    zs = [rng.standard_normal((10, 384)).astype(np.float32) for _ in range(32)]  # 32 distinct users
    bodies = [{"text": texts[i % len(texts)], "z": encode_z(z)} for i, z in enumerate(zs)]

    async def burst():
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            return await asyncio.gather(*(client.post("/v1/classify", json=b) for b in bodies))

    before = httpx.get(url + "/v1/stats").json()
    answers = [r.json() for r in asyncio.run(burst())]
    after = httpx.get(url + "/v1/stats").json()
    passes = after["forward_passes"] - before["forward_passes"]
    assert after["requests"] - before["requests"] == 32 and 1 <= passes < 32
    assert after["largest_batch"] > 1
    for body, batched in zip(bodies, answers):  # each alone: a batch of one
        alone = httpx.post(url + "/v1/classify", json=body, timeout=60).json()
        np.testing.assert_allclose(batched["probabilities"], alone["probabilities"], atol=1e-5)
        assert batched["label"] == alone["label"]


@pytest.mark.parametrize(
    "body,status,field",
    [
        ({"text": "fine", "z": "@@not base64@@"}, 422, "z"),
        ({"text": "fine", "z": encode_z(np.zeros((3, 384)))}, 422, "z"),
        ({"text": "fine", "z": [[0.0] * 384] * 9}, 422, "z"),
        ({"text": "fine", "z": [["a"] * 384] * 10}, 422, "z"),
        ({"text": "fine", "z": encode_z(np.full((10, 384), np.nan))}, 422, "z"),
        ({"text": "fine", "z": encode_z(np.full((10, 384), np.inf))}, 422, "z"),
        ({"text": "", "z": encode_z(np.zeros((10, 384)))}, 422, "text"),
        ({"text": "   ", "z": encode_z(np.zeros((10, 384)))}, 422, "text"),
        ({"text": "word " * 400, "z": encode_z(np.zeros((10, 384)))}, 413, "text"),
        ({"text": "fine", "z": encode_z(np.zeros((10, 384))), "user": "alice"}, 422, "user"),
        ({"text": "fine"}, 422, "z"),
        ({"text": "fine", "z": encode_z(np.zeros((10, 384))), "z_hash": "0" * 64}, 409, "z_hash"),
    ],
)
def test_bad_requests_get_a_4xx_that_names_the_field(server, body, status, field):
    _, url = server
    r = httpx.post(url + "/v1/classify", json=body, timeout=60)
    assert r.status_code == status and r.json()["error"]["field"] == field, r.text
    good = httpx.post(url + "/v1/classify", json={"text": "fine", "z": encode_z(np.zeros((10, 384)))}, timeout=60)
    assert good.status_code == 200  # the host keeps serving


def test_oversized_body_is_refused(server):
    _, url = server
    r = httpx.post(url + "/v1/classify", content=b"{" + b" " * (3 << 20) + b"}",
                   headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code == 413 and r.json()["error"]["field"] == "body"


def test_memory_does_not_grow_with_distinct_users(server, texts):
    """After a warm-up, RSS stays flat over 768 more users, each with a distinct Z.

    glibc keeps freed pages and grows arenas in steps, so readings move by up to ~15 MB either way
    (seen in the full suite: 605, 610, 596 | 611, 611, 611 and 553, 553, 553 | 554, 568, 565), and in
    the full suite once rose by 38 MB (575, 561, 561 | 579, 599, 601; flat when run alone; not yet
    explained, possibly per-shape kernel caches as cross-user batch sizes vary with load). Compare the
    median reading of the first three rounds with that of the last three, within 15 %. This test
    catches per-user state: keeping anything adapter-sized per user (a LoRA r=16 adapter is 0.88 MB at
    this size) would add over 300 MB here. The issue's 2 % bound at 1,000 users is what
    ``bench/serve.py`` measures, over longer runs (``bench/results/serve.json``).
    """
    proc, url = server
    rng = np.random.default_rng(1)

    async def users(n: int):
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            for _ in range(0, n, 32):
                await asyncio.gather(*(
                    client.post("/v1/classify", json={"text": texts[i % len(texts)],
                                                      "z": encode_z(rng.standard_normal((10, 384)))})
                    for i in range(32)
                ))

    asyncio.run(users(256))  # warm-up: allocator pools and every batch shape
    readings = []
    for _ in range(6):
        asyncio.run(users(128))
        readings.append(_rss_kb(proc.pid) / 1024)
    early, late = statistics.median(readings[:3]), statistics.median(readings[3:])
    print(f"RSS readings (MB) over 6 × 128 new users: {[round(r, 1) for r in readings]}")
    assert late - early < 0.15 * early, f"host RSS (median) rose from {early:.1f} to {late:.1f} MB"


def test_api_key_and_sigterm(export_dir):
    proc, url = _start(export_dir, "--api-key", "s3cret", "--threads", "1", "--cors-origin", "http://127.0.0.1:8000")
    try:
        body = {"text": "fine", "z": encode_z(np.zeros((10, 384)))}
        assert httpx.post(url + "/v1/classify", json=body, timeout=60).status_code == 401
        bad = httpx.post(url + "/v1/classify", json=body, headers={"Authorization": "Bearer nope"}, timeout=60)
        assert bad.status_code == 401 and bad.json()["error"]["field"] == "authorization"
        ok = httpx.post(url + "/v1/classify", json=body, headers={"Authorization": "Bearer s3cret"}, timeout=60)
        assert ok.status_code == 200
        assert httpx.get(url + "/healthz").status_code == 200  # health checks need no key
        pre = httpx.options(url + "/v1/classify", headers={"Origin": "http://127.0.0.1:8000",
                                                           "Access-Control-Request-Method": "POST"})
        assert pre.headers.get("access-control-allow-origin") == "http://127.0.0.1:8000"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def test_infer_through_the_host_equals_offline_infer(server, export_dir, capsys):
    from lopa_fed import cli

    _, url = server
    argv = ["infer", "--prompt-dir", str(export_dir), "--dev", "16", "--text", "a gorgeous, witty film", "--json"]
    assert cli.main(argv) == 0
    offline = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert cli.main([*argv, "--host", url]) == 0
    remote = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(offline) == 17
    assert [(r["label"], r["index"], r.get("gold")) for r in remote] == [
        (r["label"], r["index"], r.get("gold")) for r in offline
    ]
    assert cli.main([*argv, "--host", "http://127.0.0.1:9"]) == 2  # nothing listens there
    assert "cannot be reached" in capsys.readouterr().err
