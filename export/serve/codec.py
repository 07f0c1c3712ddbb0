"""Z on the wire: base64 of little-endian float32 (row-major T×d), or a nested list of numbers."""

from __future__ import annotations

import base64
import binascii

import numpy as np

__all__ = ["RequestError", "decode_z", "encode_z"]


class RequestError(ValueError):
    """A bad request: ``field`` names the JSON field at fault, ``status`` the HTTP code to answer with."""

    def __init__(self, field: str, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.field, self.status = field, status


def encode_z(z: np.ndarray) -> str:
    """``Z: T×d`` as base64 of little-endian float32 bytes (what :func:`decode_z` reads)."""
    return base64.b64encode(np.ascontiguousarray(z, dtype="<f4").tobytes()).decode("ascii")


def decode_z(value: str | list, tokens: int, d: int) -> np.ndarray:
    """``Z: T×d`` float32 from a request, checked against the export's shape.

    Parameters
    ----------
    value : str or nested list
        Base64 of ``T·d`` little-endian float32 values, or a ``T×d`` nested list of numbers.
    tokens, d : int
        The export's number of soft tokens T and the frozen model's width d.

    Raises
    ------
    RequestError
        Not base64, the wrong number of bytes or shape, not numbers, or NaN/Inf values.
    """
    if isinstance(value, str):
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise RequestError("z", "z is not valid base64") from None
        if len(raw) != 4 * tokens * d:
            raise RequestError(
                "z", f"z holds {len(raw)} bytes; this host takes float32 {tokens}×{d} = {4 * tokens * d} bytes"
            )
        z = np.frombuffer(raw, dtype="<f4").reshape(tokens, d).astype(np.float32)
    else:
        try:
            z = np.asarray(value, dtype=np.float32)
        except (TypeError, ValueError):
            raise RequestError("z", "z must be a nested list of numbers (or base64 float32)") from None
        if z.shape != (tokens, d):
            raise RequestError("z", f"z has shape {list(z.shape)}; this host takes [{tokens}, {d}]")
    if not np.isfinite(z).all():
        raise RequestError("z", "z holds NaN or Inf values")
    return z
