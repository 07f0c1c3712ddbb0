"""The model host's ASGI application: FastAPI endpoints over one frozen model.

Endpoints
---------
``POST /v1/classify`` (classification exports)
    ``{"text", "text_pair"?, "z", "z_hash"?}`` → ``label`` (the name ``lopa-fed infer`` prints),
    ``index``, per-class ``probabilities`` and ``timing``. ``z`` is the device's soft prompt
    ``T×d``: base64 of little-endian float32, or a nested list. ``z_hash``, when sent, must be
    the embedding hash the prompt generator was exported for.
``POST /v1/generate`` (code-task exports, :mod:`.generation`)
    ``{"prompt", "z", "max_new_tokens"?, "stop"?, "z_hash"?}`` → ``text``.
``GET /v1/model``
    Identity, embedding hash, ``m``, ``num_tokens``, ``d``, task, labels and the accepted Z format.
``GET /v1/stats``
    Requests, forward passes and batch sizes so far (counters, not per-user state).
``GET /healthz``, ``GET /openapi.json``, ``GET /docs``.

A bad request gets a 4xx with ``{"error": {"field": ..., "message": ...}}`` and the host goes
on serving. The host keeps nothing per user: a request's Z lives only until its batch is answered.
"""

from __future__ import annotations

import contextlib
import hmac
import time
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from ..host import ModelHost, predict_logits
from .batching import MicroBatcher
from .codec import RequestError, decode_z
from .generation import GenerateRequest, GenerationService

#: Largest request body accepted (a 20×4096 float32 Z in base64 is about 440 kB).
MAX_BODY_BYTES = 2 * 1024 * 1024


class ClassifyRequest(BaseModel):
    """One user's request: the text and the soft prompt computed on the device."""

    model_config = ConfigDict(extra="forbid")
    text: str = Field(min_length=1, description="the text (first sentence of a pair task)")
    text_pair: str | None = Field(default=None, min_length=1, description="second sentence of a pair task")
    z: str | list[list[float]] = Field(description="Z: T×d, base64 little-endian float32 or a nested list")
    z_hash: str | None = Field(default=None, description="embedding hash the prompt generator was exported for")


class Job:
    """A checked request waiting for its batch: texts and ``Z: T×d``."""

    __slots__ = ("text", "z")

    def __init__(self, text: str | tuple[str, str], z: np.ndarray) -> None:
        self.text, self.z = text, z


class HostService:
    """The model host behind the endpoints: checks requests and runs batches of them."""

    def __init__(self, host: ModelHost, meta: dict[str, Any]) -> None:
        self.host, self.meta = host, meta
        self.tokens, self.d = int(meta["num_tokens"]), int(meta["d"])
        self.embedding_hash = host.model.frozen.embedding_hash()
        self.labels = [host.label_name(i) for i in range(host.model.num_labels)]
        self.pair = bool(getattr(host.task, "is_pair", False))

    def job(self, req: ClassifyRequest) -> Job:
        """Check one request against this host (shape, values, model, token limit) and make its job."""
        if req.z_hash is not None and req.z_hash != self.embedding_hash:
            raise RequestError("z_hash", "z was made for another frozen model (embedding hash differs)", 409)
        if self.pair and not req.text_pair:
            raise RequestError("text_pair", f"task {self.host.task.name} takes sentence pairs; send text_pair")
        if not req.text.strip():
            raise RequestError("text", "text is empty")
        text = (req.text, req.text_pair) if self.pair else req.text
        n = len(self.host.model.frozen.tokenizer(*((text,) if isinstance(text, str) else text))["input_ids"])
        if n > self.host.max_length:
            raise RequestError("text", f"text is {n} tokens; this host reads at most {self.host.max_length}", 413)
        return Job(text, decode_z(req.z, self.tokens, self.d))

    def run(self, jobs: list[Job]) -> list[dict[str, Any]]:
        """One forward pass for ``jobs``: the batch's Z is ``B×T×d``; returns per-row probabilities."""
        data = self.host.encode([j.text for j in jobs])
        z = np.stack([j.z for j in jobs])  # B×T×d
        logits = predict_logits(self.host.model, data, lambda _texts: z, batch_size=len(jobs))  # B×C
        p = np.exp(logits - logits.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        return [{"index": int(row.argmax()), "probabilities": row.astype(float).tolist()} for row in p]

    def model_card(self) -> dict[str, Any]:
        """What ``GET /v1/model`` answers."""
        fm = self.meta.get("frozen_model") or {}
        return {
            "identity": self.host.model.frozen.identity,
            "kind": self.host.model.frozen.kind,
            "embedding_sha256": self.embedding_hash,
            "exported_for": fm.get("identity"),
            "task": self.host.task.name,
            "labels": self.labels,
            "pair_task": self.pair,
            "method": self.meta.get("method"),
            "m": int(self.meta["m"]),
            "num_tokens": self.tokens,
            "d": self.d,
            "max_length": self.host.max_length,
            "z_format": {"shape": [self.tokens, self.d], "dtype": "float32", "byteorder": "little",
                         "encodings": ["base64", "nested list"]},
        }


def _error(field: str, message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": {"field": field, "message": message}}, status_code=status)


def create_app(
    service: HostService | GenerationService,
    *,
    max_batch: int = 32,
    max_wait_ms: float = 5.0,
    api_key: str | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
    cors_origins: tuple[str, ...] = (),
) -> FastAPI:
    """The ASGI app serving ``service`` (its frozen model loaded once) with cross-user micro-batching.

    ``cors_origins`` lists the browser origins allowed to call the API (e.g. a page computing Z
    with onnxruntime-web); none by default.
    """
    batcher = MicroBatcher(service.run, max_batch=max_batch, max_wait_ms=max_wait_ms)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        await batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="lopa-fed model host", version="1", lifespan=lifespan,
                  description="One frozen model; every request carries its own soft prompt Z.")
    app.state.service, app.state.batcher = service, batcher
    _add_guards(app, api_key, max_body_bytes)
    if cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["authorization", "content-type"])
    _add_routes(app, service, batcher)
    return app


def _add_guards(app: FastAPI, api_key: str | None, max_body_bytes: int) -> None:
    @app.middleware("http")
    async def guard(request: Request, call_next):
        if api_key and request.url.path.startswith("/v1/"):
            sent = request.headers.get("authorization", "")
            if not hmac.compare_digest(sent, f"Bearer {api_key}"):
                return _error("authorization", "a valid 'Authorization: Bearer <key>' header is required", 401)
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_body_bytes:
            return _error("body", f"request body is {declared} bytes; the limit is {max_body_bytes}", 413)
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {"loc": ("body",), "msg": "invalid request"}
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        field = loc[0] if loc else "body"
        return _error(field, f"{field}: {first.get('msg', 'invalid')}", 422)

    @app.exception_handler(RequestError)
    async def bad(_request: Request, exc: RequestError):
        return _error(exc.field, str(exc), exc.status)


def service_for(directory: str, model: str | None = None) -> HostService | GenerationService:
    """The service an export needs: classification, or generation for a task without class labels."""
    from lopa_fed.tasks import get_task

    from ..host import matching_frozen_model
    from ..runtime import read_sidecar

    meta = read_sidecar(directory)
    if meta.get("task") and get_task(meta["task"]).num_labels == 0:
        return GenerationService(matching_frozen_model(meta, model, Path(directory)), meta)
    return HostService(ModelHost.from_export(directory, model=model), meta)  # refuses a mismatched model


def _add_routes(app: FastAPI, service: HostService | GenerationService, batcher: MicroBatcher) -> None:
    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/model")
    async def model_card() -> dict[str, Any]:
        return service.model_card()

    @app.get("/v1/stats")
    async def stats() -> dict[str, Any]:
        s = batcher.stats
        return {"requests": s.requests, "forward_passes": s.forward_passes, "rows": s.rows,
                "largest_batch": s.largest_batch, "busy_seconds": s.busy_seconds,
                "batch_sizes": {str(k): v for k, v in sorted(s.sizes.items())}}

    if isinstance(service, GenerationService):

        @app.post("/v1/generate")
        async def generate(req: GenerateRequest) -> dict[str, Any]:
            t0 = time.perf_counter()
            res = await batcher.submit(service.job(req))
            return {**res, "timing": {"seconds": time.perf_counter() - t0}}

        return

    @app.post("/v1/classify")
    async def classify(req: ClassifyRequest) -> dict[str, Any]:
        t0 = time.perf_counter()
        job = service.job(req)
        res = await batcher.submit(job)
        return {"label": service.labels[res["index"]], **res,
                "labels": service.labels, "timing": {"seconds": time.perf_counter() - t0}}
