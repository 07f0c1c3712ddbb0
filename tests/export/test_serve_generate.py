"""``POST /v1/generate``: a real server on a real code-task export (SmolLM2 + MiniLM LoPA), real CruxEval prompts."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest

from export.pipeline import export_checkpoint
from export.runtime import PromptRuntime
from export.serve.codec import encode_z
from export.serve.process import start_server, stop_server
from lopa_fed.backbone import FrozenModel
from lopa_fed.checkpoint import save_checkpoint
from lopa_fed.codegen.generate import GenerationConfig, generate
from lopa_fed.codegen.prompting import chat_prompt, encode_prompt
from lopa_fed.config import LoPAConfig
from lopa_fed.model import build_model
from lopa_fed.tasks import get_task

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def code_export(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-gen")
    task = get_task("cruxeval-o")
    pm = build_model(task, LoPAConfig(method="lopa", m=10, r=1, hidden=64), model="smollm2", kind="causal", seed=0)
    save_checkpoint(root / "ck", pm, task=task.name)
    export_checkpoint(root / "ck", root / "export", parity_examples=2)
    return root / "export"


def test_generate_batches_users_and_equals_in_process_generation(code_export):
    task = get_task("cruxeval-o")
    prompts = [ex.prompt for ex in task.read("dev", limit=3)]
    z = PromptRuntime(code_export, threads=1).prompts([(p, None) for p in prompts])  # N×T×d on the "device"
    proc, url = start_server(code_export, "--max-wait-ms", "200", "--threads", "1")
    try:
        card = httpx.get(url + "/v1/model").json()
        assert card["generates"] and card["task"] == "cruxeval-o" and card["d"] == 576

        async def burst():
            async with httpx.AsyncClient(base_url=url, timeout=600) as client:
                return await asyncio.gather(*(
                    client.post("/v1/generate", json={"prompt": p, "z": encode_z(zi), "max_new_tokens": 8})
                    for p, zi in zip(prompts, z)
                ))

        answers = [r.json() for r in asyncio.run(burst())]
        stats = httpx.get(url + "/v1/stats").json()
        assert stats["forward_passes"] < len(prompts) and max(a["batch"] for a in answers) > 1
        bad = httpx.post(url + "/v1/generate", json={"prompt": prompts[0], "z": encode_z(z[0][:3])})
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "z"
        assert httpx.post(url + "/v1/classify", json={"text": "x", "z": encode_z(z[0])}).status_code == 404
    finally:
        assert stop_server(proc) == 0
    frozen = FrozenModel.load("smollm2", "causal")
    tok = frozen.tokenizer
    cfg = GenerationConfig(max_new_tokens=8, stop=task.stop_sequences)
    for p, zi, a in zip(prompts, z, answers):
        alone = generate(frozen, [encode_prompt(tok, chat_prompt(tok, p), 512)], np.asarray(zi)[None], cfg)[0]
        assert a["text"] == alone
