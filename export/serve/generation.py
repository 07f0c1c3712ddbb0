"""``POST /v1/generate``: code-task exports, many users' prompts decoded in one batch.

The host loads the frozen causal LM the export names (refused when its embedding hash
differs) and nothing else. A request carries the prompt text, the device's soft prompt
``Z: T×d``, ``max_new_tokens`` and ``stop``; concurrent requests with the same decoding
settings go through one batched, KV-cached decode (:func:`lopa_fed.codegen.generate.generate`),
so their decode steps share forward passes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from lopa_fed.backbone import FrozenModel
from lopa_fed.codegen.generate import GenerationConfig, generate
from lopa_fed.codegen.prompting import chat_prompt, encode_prompt
from lopa_fed.tasks import get_task

from .codec import RequestError, decode_z

#: The most new tokens one request may ask for.
MAX_NEW_TOKENS = 512


class GenerateRequest(BaseModel):
    """One user's generation request."""

    model_config = ConfigDict(extra="forbid")
    prompt: str = Field(min_length=1, description="the instruction; the host applies the model's chat template")
    z: str | list[list[float]] = Field(description="Z: T×d, base64 little-endian float32 or a nested list")
    max_new_tokens: int = Field(default=0, ge=0, le=MAX_NEW_TOKENS, description="0: the task's default")
    stop: list[str] = Field(default_factory=list, description="stop strings, added to the task's own")
    z_hash: str | None = None


class GenerationService:
    """The frozen causal LM of a code-task export behind ``/v1/generate``."""

    def __init__(self, frozen: FrozenModel, meta: dict[str, Any]) -> None:
        self.frozen, self.meta = frozen, meta
        self.task = get_task(meta["task"])
        self.tokens, self.d = int(meta["num_tokens"]), int(meta["d"])
        self.max_length = int(meta.get("frozen_max_length") or self.task.defaults.max_length)
        self.embedding_hash = frozen.embedding_hash()

    def job(self, req: GenerateRequest) -> dict[str, Any]:
        """Check one request and make its job: prompt ids, ``Z: T×d`` and decoding settings."""
        if req.z_hash is not None and req.z_hash != self.embedding_hash:
            raise RequestError("z_hash", "z was made for another frozen model (embedding hash differs)", 409)
        if not req.prompt.strip():
            raise RequestError("prompt", "prompt is empty")
        tok = self.frozen.tokenizer
        text = chat_prompt(tok, req.prompt)
        n = len(tok(text, add_special_tokens=False)["input_ids"])
        if n > self.max_length:
            raise RequestError("prompt", f"prompt is {n} tokens; this host reads at most {self.max_length}", 413)
        stops = tuple(dict.fromkeys((*req.stop, *self.task.stop_sequences)))
        budget = req.max_new_tokens or self.task.defaults.max_new_tokens
        return {"ids": encode_prompt(tok, text, self.max_length), "z": decode_z(req.z, self.tokens, self.d),
                "config": GenerationConfig(max_new_tokens=budget, stop=stops)}

    def run(self, jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Decode ``jobs``: those with equal settings share one batch (``Z: B×T×d``)."""
        out: list[dict[str, Any] | None] = [None] * len(jobs)
        groups: dict[GenerationConfig, list[int]] = {}
        for i, job in enumerate(jobs):
            groups.setdefault(job["config"], []).append(i)
        for cfg, idx in groups.items():
            z = np.stack([jobs[i]["z"] for i in idx])
            texts = generate(self.frozen, [jobs[i]["ids"] for i in idx], z, cfg)
            for i, text in zip(idx, texts):
                out[i] = {"text": text, "batch": len(idx)}
        return out  # type: ignore[return-value]

    def model_card(self) -> dict[str, Any]:
        """What ``GET /v1/model`` answers for a generation host."""
        fm = self.meta.get("frozen_model") or {}
        return {
            "identity": self.frozen.identity, "kind": self.frozen.kind, "embedding_sha256": self.embedding_hash,
            "exported_for": fm.get("identity"), "task": self.task.name, "labels": [], "generates": True,
            "method": self.meta.get("method"), "m": int(self.meta["m"]), "num_tokens": self.tokens, "d": self.d,
            "max_length": self.max_length, "max_new_tokens": self.task.defaults.max_new_tokens,
            "z_format": {"shape": [self.tokens, self.d], "dtype": "float32", "byteorder": "little",
                         "encodings": ["base64", "nested list"]},
        }
