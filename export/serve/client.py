"""What a device calls: send the text and its locally computed Z, get the host's answer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from lopa_fed.errors import LoPAError

from .codec import encode_z

__all__ = ["HostError", "classify_remote"]


class HostError(LoPAError):
    """The model host refused a request or could not be reached; the message says why."""


def classify_remote(
    url: str,
    texts: Sequence[str | tuple[str, str]],
    z: np.ndarray,
    *,
    z_hash: str | None = None,
    api_key: str | None = None,
    timeout: float = 60.0,
) -> list[dict[str, Any]]:
    """Classify ``texts`` on the host at ``url`` with their prompts ``z: N×T×d`` (one request each).

    Returns
    -------
    list of dict
        The host's answers in order: ``label``, ``index``, ``probabilities``, ``labels``, ``timing``.

    Raises
    ------
    HostError
        The host is unreachable or answers with an error (its message is passed on).
    """
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    out = []
    with httpx.Client(base_url=url.rstrip("/"), timeout=timeout, headers=headers) as client:
        for text, zi in zip(texts, z):
            a, b = (text, None) if isinstance(text, str) else text
            body = {"text": a, "z": encode_z(zi), **({"text_pair": b} if b else {}),
                    **({"z_hash": z_hash} if z_hash else {})}
            try:
                r = client.post("/v1/classify", json=body)
            except httpx.HTTPError as exc:
                raise HostError(f"model host {url} cannot be reached ({exc})") from None
            if r.status_code != 200:
                err = (r.json().get("error") or {}) if r.headers.get("content-type", "").startswith("application/json") else {}
                raise HostError(f"model host {url} refused the request ({r.status_code}): {err.get('message', r.text[:200])}")
            out.append(r.json())
    return out
