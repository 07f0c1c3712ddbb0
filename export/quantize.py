"""int8 copy of the exported graph: dynamic, per-channel quantisation with ``onnxruntime.quantization``.

Two modes: ``full`` quantises every weight MatMul/Gemm/Gather; ``balanced`` (the default)
keeps the first :data:`BALANCED_FP32_LAYERS` transformer layers and every FFN output
projection in fp32 (on a trained SST-2 LoPA checkpoint: 97.2 % → 99.5 % prediction
agreement, 23 → 41 MB). Between them, ``ffn-l1`` and ``ffn`` keep the FFN output projections
and the first layer / no whole layer in fp32 (:data:`FP32_LAYERS`; measured by
``bench/int8_static.py``). ``static`` (QDQ, calibrated) is :mod:`export.quantize_static`.
See ``PITFALLS.md`` (ONNX) for why the shape info is cleared and why it runs in a temporary directory.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import onnx

from .errors import ExportError

__all__ = ["BALANCED_FP32_LAYERS", "INT8_MODES", "quantize_int8", "sensitive_nodes"]

log = logging.getLogger(__name__)

INT8_MODES = ("balanced", "full", "ffn", "ffn-l1", "static")
BALANCED_FP32_LAYERS = 2
#: Dynamic modes that keep weight MatMuls in fp32: mode → leading layers kept whole (plus every FFN output projection).
FP32_LAYERS = {"balanced": BALANCED_FP32_LAYERS, "ffn-l1": 1, "ffn": 0}


def check_int8_mode(mode: str) -> str:
    """``mode`` if it is one of :data:`INT8_MODES`, else :class:`ExportError`."""
    if mode not in INT8_MODES:
        raise ExportError(f"int8 mode must be one of {INT8_MODES}, got {mode!r}")
    return mode


def sensitive_nodes(model: onnx.ModelProto, first_layers: int = BALANCED_FP32_LAYERS) -> list[str]:
    """Names of weight MatMuls to keep in fp32 in ``balanced`` int8 mode.

    The graph's ``LayerNormalization`` nodes (topological order) split it into segments; in a
    post-LN BERT-style encoder (BERT, RoBERTa, MiniLM) segment ``2i`` holds layer ``i``'s attention
    projections and segment ``2i+1`` its FFN. Kept in fp32: every weight MatMul of the first
    ``first_layers`` layers and the last weight MatMul of each FFN segment (the FFN output
    projection, whose GELU input has the widest dynamic range). Nodes after the last
    LayerNormalization (pooling, prompt heads) stay quantised.

    Parameters
    ----------
    model : onnx.ModelProto
        The (pre-processed) fp32 graph that will be quantised.
    first_layers : int
        Number of leading transformer layers kept entirely in fp32.
    """
    consts = {i.name for i in model.graph.initializer}
    segments: list[list[str]] = [[]]
    for node in model.graph.node:
        if node.op_type == "LayerNormalization":
            segments.append([])
        elif node.op_type in ("MatMul", "Gemm") and len(node.input) > 1 and node.input[1] in consts:
            segments[-1].append(node.name)
    layer_segments = segments[1:-1]  # between the embedding LayerNorm and the last LayerNorm
    keep: list[str] = []
    for j, names in enumerate(layer_segments):
        if j < 2 * first_layers:
            keep += names
        elif j % 2 == 1 and names:
            keep.append(names[-1])
    return keep


def quantize_int8(fp32: Path, int8: Path, mode: str = "balanced") -> dict[str, Any]:
    """Dynamic int8 quantisation (per channel, QInt8 weights) of a dynamo export into ``int8``.

    Parameters
    ----------
    fp32, int8 : Path
        Input fp32 model and output int8 model.
    mode : str
        ``"balanced"`` (default: the first 2 layers and every FFN output projection stay fp32, see
        :func:`sensitive_nodes`), ``"ffn-l1"`` (the first layer and the FFN output projections),
        ``"ffn"`` (only the FFN output projections) or ``"full"`` (nothing). (``"static"`` is :func:`export.quantize_static.quantize_static_int8`, which needs calibration data.)

    Returns
    -------
    dict
        What was done: ``method``, ``per_channel``, ``weight_type``, ``mode``, ``fp32_nodes``.

    Raises
    ------
    ExportError
        An unknown mode, a quantiser failure, or ``onnx.checker`` refusing the result.
    """
    check_int8_mode(mode)
    if mode == "static":
        raise ExportError("int8 mode 'static' needs calibration data: use export.quantize_static.quantize_static_int8")
    with tempfile.TemporaryDirectory(prefix="lopa-quant-") as tmp:
        exclude = _quantize_in(Path(tmp), Path(fp32), mode)
        shutil.move(str(Path(tmp) / "int8.onnx"), str(int8))
    try:
        onnx.checker.check_model(str(int8))
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"onnx.checker rejected the int8 model: {exc}") from exc
    return {
        "method": "onnxruntime.quantization.quantize_dynamic",
        "per_channel": True,
        "weight_type": "QInt8",
        "mode": mode,
        "fp32_nodes": exclude,
    }


def _quantize_in(tmp: Path, fp32: Path, mode: str) -> list[str]:
    """Quantise ``fp32`` into ``tmp/int8.onnx`` with ``tmp`` as the cwd; returns the fp32-kept nodes."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src = _preprocess(tmp, fp32)
    cwd = os.getcwd()
    os.chdir(tmp)  # the quantiser leaves large temporary files in the cwd
    try:
        exclude = sensitive_nodes(onnx.load(str(src)), FP32_LAYERS[mode]) if mode in FP32_LAYERS else []
        quantize_dynamic(
            str(src), str(tmp / "int8.onnx"), per_channel=True, weight_type=QuantType.QInt8, nodes_to_exclude=exclude
        )
    except Exception as exc:  # onnxruntime raises many types; the message says which
        raise ExportError(f"int8 quantisation failed: {type(exc).__name__}: {exc}") from exc
    finally:
        os.chdir(cwd)
    return exclude


def _preprocess(tmp: Path, fp32: Path) -> Path:
    """The graph to quantise: shape info cleared, pre-processed without symbolic shape inference if possible."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model = onnx.load(str(fp32))
    del model.graph.value_info[:]  # quantising a dynamo export otherwise fails shape inference
    clean, pre = tmp / "clean.onnx", tmp / "pre.onnx"
    onnx.save(model, str(clean))
    cwd = os.getcwd()
    os.chdir(tmp)
    try:
        quant_pre_process(str(clean), str(pre), skip_symbolic_shape=True)
        return pre
    except Exception as exc:  # pre-processing is an optimisation; quantise the plain graph instead
        log.warning("int8 pre-processing failed (%s); quantising without it", exc)
        return clean
    finally:
        os.chdir(cwd)
