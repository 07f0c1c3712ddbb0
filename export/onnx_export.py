"""``torch.onnx.export`` (dynamo) of a :class:`~export.graph.PromptGraph`, checked with ``onnx.checker``.

The file has dynamic ``batch`` and ``seq`` axes on both inputs and embeds its weights
(no ``.onnx.data`` file). The dynamo exporter implements opset 18 and later: asked for
less, it silently keeps 18 when its down-conversion fails (LayerNormalization has no
earlier version), so :func:`check_opset` refuses such values and :func:`export_onnx`
returns the opset the file really declares.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import torch

from lopa_fed.errors import ConfigError

from .errors import ExportError
from .graph import PromptGraph
from .runtime import INPUT_NAMES, OUTPUT_NAME

__all__ = ["DEFAULT_OPSET", "MIN_OPSET", "check_opset", "export_onnx", "max_opset", "written_opset"]

#: Lowest opset the dynamo exporter implements, and the default.
MIN_OPSET = 18
DEFAULT_OPSET = 18


def max_opset() -> int:
    """Highest opset the installed ``onnx`` package knows (28 for onnx 1.23)."""
    return int(onnx.defs.onnx_opset_version())


def check_opset(opset: object) -> int:
    """``opset`` as an int if the dynamo exporter can write it, else :class:`ConfigError`."""
    top = max_opset()
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= top:
        raise ConfigError(
            f"--opset must be an integer from {MIN_OPSET} (the lowest the dynamo exporter writes) to {top} "
            f"(the highest onnx {onnx.__version__} knows), got {opset!r}"
        )
    return opset


def written_opset(model: onnx.ModelProto) -> int:
    """The default-domain (``ai.onnx``) opset a model declares."""
    return next(int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx"))


def export_onnx(graph: PromptGraph, path: Path, example: dict[str, torch.Tensor], opset: int) -> int:
    """Export ``graph`` to ``path`` with dynamic ``batch``/``seq`` axes, check it, return its opset.

    Parameters
    ----------
    graph : PromptGraph
        Module to export (eval mode).
    path : Path
        Output ``.onnx`` file (weights embedded, no external data).
    example : dict
        ``input_ids``/``attention_mask`` example tensors, each ``B×L`` (B ≥ 2, L ≥ 2).
    opset : int
        Requested opset (see :func:`check_opset`).

    Returns
    -------
    int
        The opset the written file declares (equal to ``opset``).

    Raises
    ------
    ExportError
        The exporter failed, wrote external data or another opset, or ``onnx.checker`` refused the file.
    """
    _run_exporter(graph, path, example, opset)
    if (path.parent / (path.name + ".data")).exists():
        raise ExportError(f"the exporter wrote external data next to {path}; expected a single self-contained file")
    try:
        onnx.checker.check_model(str(path), full_check=False)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"onnx.checker rejected {path.name}: {exc}") from exc
    got = written_opset(onnx.load(str(path), load_external_data=False))
    if got != opset:
        raise ExportError(
            f"the exporter wrote opset {got}, not the requested {opset} (its version conversion failed); "
            f"export with --opset {got}"
        )
    return got


def _run_exporter(graph: PromptGraph, path: Path, example: dict[str, torch.Tensor], opset: int) -> None:
    """``torch.onnx.export(dynamo=True)`` with both inputs dynamic on axes 0 (batch) and 1 (seq)."""
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
    dynamic = {n: {0: batch, 1: seq} for n in INPUT_NAMES}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                graph,
                tuple(example[n] for n in INPUT_NAMES),
                str(path),
                dynamo=True,
                external_data=False,
                input_names=list(INPUT_NAMES),
                output_names=[OUTPUT_NAME],
                dynamic_shapes=dynamic,
                opset_version=opset,
                verbose=False,
            )
        except Exception as exc:  # the exporter raises many types; the message says which
            raise ExportError(f"torch.onnx.export (dynamo) failed: {type(exc).__name__}: {exc}") from exc
