"""``lopa-fed serve``: run the model host for an export directory on uvicorn."""

from __future__ import annotations

import argparse
import signal
from typing import Any

from lopa_fed.errors import ConfigError


def register(subparsers: Any) -> None:
    """Add ``serve``."""
    s = subparsers.add_parser(
        "serve",
        help="serve the frozen model over HTTP; every request carries its own Z (nothing stored per user)",
        description=(
            "Load the frozen model and the task's host tensors of an export once, refuse a frozen model whose "
            "embedding hash differs from export.json, and serve POST /v1/classify (POST /v1/generate for a code-task "
            "export), GET /v1/model, /v1/stats, "
            "/healthz and the OpenAPI schema (/docs). Concurrent requests share one forward pass (up to "
            "--max-batch rows, waiting at most --max-wait-ms)."
        ),
    )
    s.add_argument("--prompt-dir", required=True, help="export directory written by `lopa-fed export`")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    s.add_argument("--port", type=int, default=8080, help="port (default: 8080)")
    s.add_argument("--max-batch", type=int, default=32, help="most requests per forward pass (default: 32)")
    s.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a batch waits to fill (default: 5)")
    s.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1/ endpoints")
    s.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="browser origin allowed to call the API, e.g. http://127.0.0.1:8000 (repeatable; default: none)")
    s.add_argument("--model", default=None, help="frozen model name (default: the one recorded in export.json)")
    s.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    s.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    """``lopa-fed serve``."""
    if not 1 <= args.port <= 65535:
        raise ConfigError(f"--port must be in [1, 65535], got {args.port}")
    if args.max_batch < 1 or args.max_wait_ms < 0:
        raise ConfigError("--max-batch must be >= 1 and --max-wait-ms >= 0")
    import torch
    import uvicorn

    from .app import create_app, service_for

    if args.threads:
        torch.set_num_threads(args.threads)
    service = service_for(args.prompt_dir, model=args.model)  # refuses a mismatched frozen model
    app = create_app(service, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, api_key=args.api_key,
                     cors_origins=tuple(args.cors_origin))
    card = service.model_card()
    print(f"lopa-fed serve: {card['task']} on {card['identity']} at http://{args.host}:{args.port} "
          "(SIGTERM or Ctrl-C stops it)", flush=True)
    # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal: make that last step a no-op
    # so a requested stop exits 0 (the default handler would end the process with -15).
    signal.signal(signal.SIGTERM, lambda *_: None)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    print("lopa-fed serve: stopped", flush=True)
    return 0
