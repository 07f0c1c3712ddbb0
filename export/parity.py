"""Parity checks between the PyTorch prompt generator and its ONNX export.

* :func:`torch_prompts` – ``Z`` from the PyTorch graph (no feature cache), the reference;
* :func:`z_diff` – max/mean absolute difference and worst cosine of two ``Z`` arrays;
* :func:`prediction_parity` – final predictions of the frozen model fed each ``Z`` (tie-aware).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from lopa_fed.data import EncodedDataset
from lopa_fed.model import PromptedModel

from .host import predict_logits
from .runtime import PromptRuntime, TextInput

#: Logit margin below which a PyTorch prediction counts as a numerical tie (see :func:`prediction_parity`).
TIE_MARGIN = 1e-4


@torch.no_grad()
def torch_prompts(model: PromptedModel, texts: Sequence[TextInput], batch_size: int = 32) -> np.ndarray:
    """Reference ``Z: B×T×d`` from the PyTorch generator, tokenising like the runtime.

    The instance encoder's feature cache is bypassed so the encoder really runs.
    """
    gen = model.prompt
    if gen is None:
        raise ValueError(f"method {model.config.method!r} has no prompt generator to export")
    gen.eval()
    out = []
    for s in range(0, len(texts), batch_size):
        chunk = list(texts[s : s + batch_size])
        if gen.uses_features:
            enc = model.encoder.tokenize(chunk)
            e = model.encoder.net(enc["input_ids"], enc["attention_mask"]).float()
        else:
            e = torch.zeros(len(chunk), 0)
        out.append(gen(e).float().numpy())
    return np.concatenate(out, 0)


def z_diff(ref: np.ndarray, other: np.ndarray) -> dict[str, float]:
    """``max_abs_diff``, ``mean_abs_diff`` and ``min_cosine`` (per example, flattened) of two ``B×T×d`` arrays."""
    if ref.shape != other.shape:
        raise ValueError(f"Z shapes differ: {ref.shape} vs {other.shape}")
    diff = np.abs(ref.astype(np.float64) - other.astype(np.float64))
    a = ref.reshape(ref.shape[0], -1).astype(np.float64)
    b = other.reshape(other.shape[0], -1).astype(np.float64)
    cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
    return {
        "max_abs_diff": float(diff.max()) if diff.size else 0.0,
        "mean_abs_diff": float(diff.mean()) if diff.size else 0.0,
        "min_cosine": float(cos.min()) if cos.size else 1.0,
        "max_abs_z": float(np.abs(ref).max()) if ref.size else 0.0,
    }


def margins(logits: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 logit per row (``inf`` with a single class)."""
    if logits.shape[1] < 2:
        return np.full(logits.shape[0], np.inf)
    top = np.sort(logits, axis=1)
    return top[:, -1] - top[:, -2]


def prediction_parity(
    model: PromptedModel,
    data: EncodedDataset,
    runtimes: dict[str, PromptRuntime],
    batch_size: int = 32,
    tie_margin: float = TIE_MARGIN,
) -> dict[str, dict[str, Any]]:
    """Feed the frozen model ``Z`` from PyTorch and from each runtime; compare the predictions.

    Parameters
    ----------
    model : PromptedModel
        The trained model (generator + frozen model + task head).
    data : EncodedDataset
        Real labelled examples.
    runtimes : dict
        Named :class:`PromptRuntime` s (e.g. ``fp32``, ``int8``).
    tie_margin : float
        Examples whose PyTorch top-1/top-2 logit margin is below this are *ties*: fp32 rounding
        alone (a different batch composition, a fused kernel) can flip them.

    Returns
    -------
    dict
        ``{"torch": {"accuracy", "ties"}, name: {"accuracy", "agreement", "disagreements",
        "disagreements_beyond_ties", "disagreement_margins"}}``; ``agreement`` is the fraction of
        examples whose prediction equals the PyTorch path's.
    """
    labels = np.asarray(data.labels)
    ref_logits = predict_logits(model, data, None, batch_size)
    ref = ref_logits.argmax(-1)
    margin = margins(ref_logits)
    out: dict[str, dict[str, Any]] = {
        "torch": {
            "accuracy": float((ref == labels).mean()),
            "ties": int((margin < tie_margin).sum()),
            "tie_margin": tie_margin,
        }
    }
    for name, rt in runtimes.items():
        logits = predict_logits(model, data, rt.prompts, batch_size)
        preds = logits.argmax(-1)
        diff = preds != ref
        out[name] = {
            "accuracy": float((preds == labels).mean()),
            "agreement": float((~diff).mean()),
            "disagreements": int(diff.sum()),
            "disagreements_beyond_ties": int((diff & (margin >= tie_margin)).sum()),
            "disagreement_margins": sorted(float(m) for m in margin[diff])[:20],
            "max_abs_logit_diff": float(np.abs(logits - ref_logits).max()) if len(logits) else 0.0,
        }
    return out
