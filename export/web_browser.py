"""Run a web bundle in the system's headless Chromium: a local static server plus the puppeteer-core driver.

Used by the browser test (``tests/export/test_web_bundle.py``) and the browser rows of
``bench/onnx_latency.py``::

    with serve_static(export_dir, isolated=True) as base:           # http://127.0.0.1:PORT/
        out = run_in_browser(base + "web/", [("a film", None)], repeats=20)
    out["items"][0]["ids"], decode_items(out)[0].shape               # token ids, Z: 1×T×d

Only 127.0.0.1 is used. ``isolated=True`` adds the COOP/COEP headers that make a page
cross-origin isolated, which onnxruntime-web needs for more than one wasm thread.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator, Sequence
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

from .web_bundle import SOURCES, WebBundleError, default_node_modules

__all__ = [
    "BROWSER_ENV", "browser_missing", "decode_items", "find_browser", "run_demo", "run_in_browser", "serve_static",
]

BROWSER_ENV = "LOPA_FED_BROWSER"
BROWSERS = ("chromium-headless-shell", "chromium", "chromium-browser")
DRIVER = SOURCES / "driver.mjs"
INSTALL_HINT = (
    "install a headless browser and the npm packages: `apt-get install -y chromium-headless-shell` "
    f"and `npm ci --prefix {SOURCES}` (or `make test`)"
)


def find_browser() -> str | None:
    """``$LOPA_FED_BROWSER``, else the first of :data:`BROWSERS` on ``PATH`` (``None`` if none)."""
    env = os.environ.get(BROWSER_ENV)
    if env:
        return env if Path(env).is_file() else None
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    return None


def browser_missing() -> str | None:
    """Why the browser test cannot run here (no browser, node or npm packages), or ``None``."""
    if find_browser() is None:
        return f"no headless Chromium found ({', '.join(BROWSERS)} or ${BROWSER_ENV}); {INSTALL_HINT}"
    if shutil.which("node") is None:
        return f"node is not installed; {INSTALL_HINT}"
    if not (default_node_modules() / "puppeteer-core" / "package.json").is_file():
        return f"puppeteer-core is not in {default_node_modules()}; {INSTALL_HINT}"
    return None


class _Handler(SimpleHTTPRequestHandler):
    """Static files with module/wasm MIME types, no caching and optional COOP/COEP headers."""

    extensions_map = {
        **SimpleHTTPRequestHandler.extensions_map,
        ".js": "text/javascript", ".mjs": "text/javascript", ".wasm": "application/wasm",
        ".json": "application/json", ".onnx": "application/octet-stream", ".html": "text/html; charset=utf-8",
    }

    def __init__(self, *args: Any, isolated: bool = False, **kwargs: Any) -> None:
        self.isolated = isolated
        super().__init__(*args, **kwargs)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path.split("?")[0].endswith("/blank.html"):
            body = b"<!doctype html><meta charset=utf-8><title>blank</title>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-store")
        if self.isolated:
            self.send_header("Cross-Origin-Opener-Policy", "same-origin")
            self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        super().end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@contextlib.contextmanager
def serve_static(directory: str | os.PathLike[str], *, isolated: bool = False) -> Iterator[str]:
    """Serve ``directory`` on ``127.0.0.1`` (a free port) while the block runs; yields the base URL."""
    handler = functools.partial(_Handler, directory=str(directory), isolated=isolated)
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def run_in_browser(
    url: str,
    inputs: Sequence[str | tuple[str, str | None]],
    *,
    threads: int | None = None,
    repeats: int = 0,
    timeout: float = 180.0,
) -> dict[str, Any]:
    """Load the bundle at ``url`` in headless Chromium; token ids and Z of every input (see ``driver.mjs``).

    Returns
    -------
    dict
        ``items`` (``ids``, ``dims``, ``z`` base64), ``load_ms``, ``first_z_ms``, ``threads``,
        ``isolated``, ``times_ms`` (``repeats`` rounds over the inputs), ``version``, ``logs``.

    Raises
    ------
    WebBundleError
        No browser/node, or the page failed (the message carries the browser's console).
    """
    extra = ["--repeats", str(repeats)] + (["--threads", str(threads)] if threads is not None else [])
    return _drive(url, inputs, extra, timeout)


def run_demo(
    url: str, text: str, pair: str | None = None, *, host: str | None = None,
    screenshot: str | os.PathLike[str] | None = None, timeout: float = 180.0,
) -> dict[str, str]:
    """Open the bundle's ``index.html``, type ``text`` (and ``pair``, a model ``host``), press the button.

    Returns
    -------
    dict
        ``about`` (the page's status line) and ``out`` (what it shows: shape, norm, time, the host's answer).
    """
    extra = ["--demo"] + (["--host", host] if host else []) + (["--screenshot", str(screenshot)] if screenshot else [])
    return _drive(url, [(text, pair)], extra, timeout)["demo"]


def _drive(url: str, inputs: Sequence[str | tuple[str, str | None]], extra: list[str], timeout: float) -> dict[str, Any]:
    """Run ``driver.mjs`` on ``inputs`` and return its JSON output."""
    why = browser_missing()
    if why:
        raise WebBundleError(why)
    rows = [{"text": t, "pair": None} if isinstance(t, str) else {"text": t[0], "pair": t[1]} for t in inputs]
    with tempfile.TemporaryDirectory(prefix="lopa-web-") as tmp:
        src, dst = Path(tmp) / "in.json", Path(tmp) / "out.json"
        src.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
        cmd = ["node", str(DRIVER), "--url", url, "--inputs", str(src), "--out", str(dst),
               "--browser", str(find_browser()), "--timeout", str(int(timeout * 1000)), *extra]
        env = {**os.environ, "LOPA_FED_NODE_MODULES": str(default_node_modules())}
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 30, env=env)
        except subprocess.TimeoutExpired as exc:
            raise WebBundleError(f"the browser run did not finish within {timeout + 30:.0f} s") from exc
        if proc.returncode != 0 or not dst.is_file():
            raise WebBundleError(f"the browser run failed: {(proc.stderr or proc.stdout).strip()[:2000]}")
        return json.loads(dst.read_text(encoding="utf-8"))


def decode_items(result: dict[str, Any]) -> list[np.ndarray]:
    """The Zs of :func:`run_in_browser`'s items as float32 arrays shaped ``dims`` (``1×T×d``)."""
    return [
        np.frombuffer(base64.b64decode(it["z"]), dtype="<f4").reshape(it["dims"]).astype(np.float32)
        for it in result["items"]
    ]
