"""Start ``lopa-fed serve`` as a separate process on a free loopback port (tests and benchmarks)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

__all__ = ["free_port", "start_server", "stop_server"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(prompt_dir: str | os.PathLike, *options: str, timeout: float = 300.0) -> tuple[subprocess.Popen, str]:
    """Run ``lopa-fed serve --prompt-dir DIR OPTIONS`` and wait until ``/healthz`` answers.

    Returns
    -------
    (Popen, str)
        The server process and its base URL.

    Raises
    ------
    RuntimeError
        The server exited, or did not answer within ``timeout`` seconds.
    """
    import httpx

    port = free_port()
    cmd = [sys.executable, "-m", "lopa_fed.cli", "serve", "--prompt-dir", str(prompt_dir), "--port", str(port), *options]
    proc = subprocess.Popen(cmd, env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"lopa-fed serve exited with {proc.returncode}: {proc.stdout.read()[-2000:]}")
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"lopa-fed serve did not answer on {url} within {timeout:.0f} s")


def stop_server(proc: subprocess.Popen, timeout: float = 30.0) -> int:
    """SIGTERM, then wait; returns the exit code (killing the process if it does not stop)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode
