"""Static int8 (QDQ) copy of the exported graph, calibrated on real training text.

``onnxruntime.quantization.quantize_static`` with a :class:`FeedReader` over tokenised real
train inputs: weights per channel (QInt8), activations with calibrated ranges. Kept in fp32:

* the prompt generator itself: every node after the encoder's last ``LayerNormalization``
  (pooling, the instance heads, the gate; :func:`generator_nodes`) — it is tiny and its output
  is Z itself;
* optionally the sensitive encoder MatMuls of :func:`export.quantize.sensitive_nodes` (the first
  layers and the FFN output projections).

Only MatMuls with a constant weight are quantised (``MatMulConstBOnly``): attention's
activation×activation products stay fp32. The QDQ graph runs fast only when onnxruntime fuses
the QDQ pairs into integer kernels, which it does from the ``extended`` optimisation level on;
:func:`quantize_static_int8` records that level and :class:`export.runtime.PromptRuntime` uses it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from .errors import ExportError
from .quantize import _preprocess, sensitive_nodes

__all__ = ["STATIC_DEFAULTS", "FeedReader", "generator_nodes", "quantize_static_int8"]

#: The static setting with the best prediction agreement on a trained SST-2 checkpoint (bench/int8_static.py:
#: 99.2 % at 2.24x eager, batch 1, 1 thread; README "int8 that keeps predictions").
STATIC_DEFAULTS: dict[str, Any] = {"first_layers": 1, "ffn_out": True, "calibrate": "minmax", "activation": "QUInt8"}


class FeedReader:
    """A ``CalibrationDataReader``: yields each ``{"input_ids": 1×L, "attention_mask": 1×L}`` feed once."""

    def __init__(self, feeds: Iterable[dict[str, np.ndarray]]) -> None:
        self._feeds = list(feeds)
        self._it = iter(self._feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._feeds)

    def __len__(self) -> int:
        return len(self._feeds)


def generator_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes after the last ``LayerNormalization``: pooling, prompt heads and gate."""
    last = max((i for i, n in enumerate(model.graph.node) if n.op_type == "LayerNormalization"), default=-1)
    return [n.name for n in model.graph.node[last + 1 :]]


def excluded_nodes(model: onnx.ModelProto, first_layers: int, ffn_out: bool) -> list[str]:
    """Nodes kept in fp32: the generator, the first ``first_layers`` layers and (``ffn_out``) FFN output projections."""
    ffn = sensitive_nodes(model, 0)  # the FFN output projection of each layer, in order
    first = set(sensitive_nodes(model, first_layers)) - set(ffn[first_layers:])  # every MatMul of layers < k
    return sorted(set(generator_nodes(model)) | first | (set(ffn) if ffn_out else set()))


def pad_feeds(feeds: Sequence[dict[str, np.ndarray]], pad_id: int = 0) -> list[dict[str, np.ndarray]]:
    """Right-pad ``1×L`` feeds to the longest ``L`` (``input_ids`` with ``pad_id``, ``attention_mask`` with 0)."""
    n = max(int(f["input_ids"].shape[1]) for f in feeds)
    out = []
    for f in feeds:
        k = n - int(f["input_ids"].shape[1])
        out.append({
            "input_ids": np.pad(f["input_ids"], ((0, 0), (0, k)), constant_values=pad_id),
            "attention_mask": np.pad(f["attention_mask"], ((0, 0), (0, k)), constant_values=0),
        })
    return out


def quantize_static_int8(
    fp32: Path,
    int8: Path,
    feeds: Sequence[dict[str, np.ndarray]],
    *,
    first_layers: int = STATIC_DEFAULTS["first_layers"],
    ffn_out: bool = STATIC_DEFAULTS["ffn_out"],
    calibrate: str = STATIC_DEFAULTS["calibrate"],
    activation: str = STATIC_DEFAULTS["activation"],
    pad_id: int = 0,
) -> dict[str, Any]:
    """Static QDQ quantisation of ``fp32`` into ``int8``, calibrated on ``feeds``.

    Parameters
    ----------
    fp32, int8 : Path
        Input fp32 model and output int8 model.
    feeds : sequence of dict
        Calibration inputs: ``input_ids`` and ``attention_mask``, each ``1×L`` int64, from real train text.
    first_layers : int
        Leading encoder layers kept entirely in fp32.
    ffn_out : bool
        Keep every FFN output projection in fp32.
    calibrate : str
        ``"minmax"``, ``"percentile"`` (99.999) or ``"entropy"``.
    activation : str
        ``"QUInt8"`` or ``"QInt8"`` activations.
    pad_id : int
        Padding token: the histogram calibrations (percentile, entropy) need equal-length feeds, so
        theirs are right-padded with it (attention mask 0) to the longest.

    Returns
    -------
    dict
        What was done (method, calibration, fp32 nodes, the optimisation level the runtime must use).
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if not feeds:
        raise ExportError("static int8 quantisation needs calibration inputs (real train text)")
    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    if calibrate not in methods:
        raise ExportError(f"calibration must be one of {sorted(methods)}, got {calibrate!r}")
    with tempfile.TemporaryDirectory(prefix="lopa-qstatic-") as tmp:
        tmpd = Path(tmp)
        src = _preprocess(tmpd, Path(fp32))
        exclude = excluded_nodes(onnx.load(str(src)), first_layers, ffn_out)
        extra = {"MatMulConstBOnly": True, "ActivationSymmetric": activation == "QInt8"}
        if calibrate == "percentile":
            extra["CalibPercentile"] = 99.999
        if calibrate != "minmax":
            feeds = pad_feeds(feeds, pad_id)
        cwd = os.getcwd()
        os.chdir(tmpd)  # the calibrator writes its augmented model into the cwd
        try:
            quantize_static(
                str(src), str(tmpd / "int8.onnx"), FeedReader(feeds), quant_format=QuantFormat.QDQ,
                op_types_to_quantize=["MatMul", "Gemm"], per_channel=True, weight_type=QuantType.QInt8,
                activation_type=getattr(QuantType, activation), nodes_to_exclude=exclude,
                calibrate_method=methods[calibrate], extra_options=extra,
            )
        except Exception as exc:  # onnxruntime raises many types; the message says which
            raise ExportError(f"static int8 quantisation failed: {type(exc).__name__}: {exc}") from exc
        finally:
            os.chdir(cwd)
        shutil.move(str(tmpd / "int8.onnx"), str(int8))
    try:
        onnx.checker.check_model(str(int8))
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"onnx.checker rejected the static int8 model: {exc}") from exc
    return {
        "method": "onnxruntime.quantization.quantize_static (QDQ)",
        "per_channel": True, "weight_type": "QInt8", "activation_type": activation, "mode": "static",
        "calibration": {"method": calibrate, "examples": len(feeds), "source": "train"},
        "first_layers_fp32": first_layers, "ffn_out_fp32": ffn_out,
        "fp32_nodes": exclude, "optimization": "extended",
    }
