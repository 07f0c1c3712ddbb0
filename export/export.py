"""Export a trained prompt generator to ONNX, with parity checks and a JSON sidecar.

The exported graph is ``(input_ids: B×L, attention_mask: B×L) → frozen instance encoder
→ pooling → heads → gate → Z: B×T×d`` with dynamic ``batch`` and ``seq`` axes (for PT the
graph only broadcasts Zs to the batch size). It is produced by the ``torch.onnx.export``
dynamo exporter and checked with ``onnx.checker``.

Entry points: :func:`export_checkpoint` (a checkpoint directory, optionally with a
federated client's private state) and :func:`export_model` (an in-memory model).
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import logging
import os
import platform
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from lopa_fed.backbone import FrozenModel
from lopa_fed.checkpoint import CheckpointError, load_checkpoint, load_tensors, read_config
from lopa_fed.code_tasks import get_code_task, is_code_task
from lopa_fed.config import LoPAConfig
from lopa_fed.data import EncodedDataset, encode_examples
from lopa_fed.encoder import InstanceEncoder
from lopa_fed.model import PromptedModel
from lopa_fed.tasks import Task, get_task

from .host import HOST_FILE, name_for_identity
from .parity import prediction_parity, torch_prompts, z_diff
from .runtime import (
    FORMAT,
    FP32_FILE,
    INPUT_NAMES,
    INT8_FILE,
    OUTPUT_NAME,
    SIDECAR,
    TOKENIZER_FILE,
    PromptRuntime,
    TextInput,
    sha256_file,
)

log = logging.getLogger(__name__)

DEFAULT_OPSET = 18
FP32_TOLERANCE = 1e-4


class ExportError(RuntimeError):
    """Export failed (bad arguments, an existing output, a failed check); the message says why."""


class PromptGraph(nn.Module):
    """The exported graph: ``(input_ids: B×L, attention_mask: B×L) -> Z: B×T×d``.

    Parameters
    ----------
    generator : PromptGenerator
        The trained generator (put in eval mode: dropout off).
    encoder_net : nn.Module, optional
        :class:`lopa_fed.encoder.EncoderNet` (frozen encoder + pooling); ``None`` for PT,
        whose graph only reads the batch size of ``input_ids``.
    """

    def __init__(self, generator: nn.Module, encoder_net: nn.Module | None) -> None:
        super().__init__()
        self.generator = generator
        self.encoder_net = encoder_net

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``input_ids, attention_mask: B×L`` (int64) → ``Z: B×T×d`` (float32)."""
        if self.encoder_net is None:
            e = torch.zeros(input_ids.shape[0], 0)
        else:
            e = self.encoder_net(input_ids, attention_mask).float()
        return self.generator(e)


# ---------------------------------------------------------------------------- helpers
def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "onnx", "onnxscript", "onnxruntime", "tokenizers", "lopa-fed"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _file_entry(path: Path) -> dict[str, Any]:
    return {"bytes": path.stat().st_size, "sha256": sha256_file(path)}


def _check_output_dir(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ExportError(f"output {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ExportError(f"output directory {out} is not empty; pass --force to overwrite the export in it")


def _install(stage: Path, out: Path) -> None:
    """Move the staged files into ``out`` (created if needed), replacing same-named files."""
    out.mkdir(parents=True, exist_ok=True)
    stale = [INT8_FILE, HOST_FILE, TOKENIZER_FILE, FP32_FILE + ".data"]
    for name in stale:  # a re-export must not leave files of the previous one behind
        if not (stage / name).exists() and (out / name).exists():
            (out / name).unlink()
    for f in sorted(stage.iterdir(), key=lambda p: p.name == SIDECAR):  # sidecar last
        os.replace(f, out / f.name)


def export_onnx(graph: PromptGraph, path: Path, example: dict[str, torch.Tensor], opset: int) -> None:
    """Run the dynamo exporter with dynamic ``batch``/``seq`` axes and check the result.

    Parameters
    ----------
    graph : PromptGraph
        Module to export (eval mode).
    path : Path
        Output ``.onnx`` file (weights embedded, no external data).
    example : dict
        ``input_ids``/``attention_mask`` example tensors (``B×L``, B ≥ 2, L ≥ 2).
    opset : int
        ONNX opset version.
    """
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
    dyn = {n: {0: batch, 1: seq} for n in INPUT_NAMES}
    args = tuple(example[n] for n in INPUT_NAMES)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                graph,
                args,
                str(path),
                dynamo=True,
                external_data=False,
                input_names=list(INPUT_NAMES),
                output_names=[OUTPUT_NAME],
                dynamic_shapes=dyn,
                opset_version=opset,
                verbose=False,
            )
        except Exception as exc:
            raise ExportError(f"torch.onnx.export (dynamo) failed: {type(exc).__name__}: {exc}") from exc
    if (path.parent / (path.name + ".data")).exists():
        raise ExportError(
            f"the exporter wrote external data next to {path}; expected a single self-contained file"
        )
    try:
        onnx.checker.check_model(str(path), full_check=False)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"onnx.checker rejected {path.name}: {exc}") from exc


#: int8 modes: ``full`` quantises every weight MatMul/Gemm/Gather; ``balanced`` keeps the first
#: :data:`BALANCED_FP32_LAYERS` transformer layers and every FFN output projection in fp32 (on a
#: trained SST-2 LoPA checkpoint: 97.2 % → 99.5 % prediction agreement, 23 → 41 MB).
INT8_MODES = ("balanced", "full")
BALANCED_FP32_LAYERS = 2


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

    The stored shape info is cleared first (quantising a dynamo export otherwise fails
    shape inference); pre-processing skips symbolic shape inference; everything runs in a
    temporary directory because the quantiser leaves large temporary files in the cwd.

    Parameters
    ----------
    fp32, int8 : Path
        Input fp32 model and output int8 model.
    mode : str
        ``"balanced"`` (default: sensitive layers stay fp32, see :func:`sensitive_nodes`) or ``"full"``.

    Returns
    -------
    dict
        What was done: ``method``, ``per_channel``, ``weight_type``, ``mode``, ``fp32_nodes``.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if mode not in INT8_MODES:
        raise ExportError(f"int8 mode must be one of {INT8_MODES}, got {mode!r}")
    with tempfile.TemporaryDirectory(prefix="lopa-quant-") as tmp:
        tmpd = Path(tmp)
        model = onnx.load(str(fp32))
        del model.graph.value_info[:]
        clean, pre = tmpd / "clean.onnx", tmpd / "pre.onnx"
        onnx.save(model, str(clean))
        cwd = os.getcwd()
        os.chdir(tmpd)
        try:
            src = clean
            try:
                quant_pre_process(str(clean), str(pre), skip_symbolic_shape=True)
                src = pre
            except Exception as exc:  # pre-processing is an optimisation; quantise the plain graph instead
                log.warning("int8 pre-processing failed (%s); quantising without it", exc)
            exclude = sensitive_nodes(onnx.load(str(src))) if mode == "balanced" else []
            quantize_dynamic(
                str(src),
                str(tmpd / "int8.onnx"),
                per_channel=True,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=exclude,
            )
        except Exception as exc:
            raise ExportError(f"int8 quantisation failed: {type(exc).__name__}: {exc}") from exc
        finally:
            os.chdir(cwd)
        shutil.move(str(tmpd / "int8.onnx"), str(int8))
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


def _tokenizer_meta(encoder: InstanceEncoder, stage: Path) -> dict[str, Any]:
    """Write the encoder's tokenizer (exactly the backend the PyTorch path uses) and describe its settings."""
    backend = getattr(encoder.tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ExportError(
            f"encoder {encoder.identity}: tokenizer {type(encoder.tokenizer).__name__} has no fast (tokenizers) "
            "backend, which the torch-free runtime needs"
        )
    path = stage / TOKENIZER_FILE
    backend.save(str(path))
    tok = encoder.tokenizer
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    return {
        "file": TOKENIZER_FILE,
        "sha256": sha256_file(path),
        "identity": encoder.identity,
        "class": type(tok).__name__,
        "max_length": int(encoder.max_length),
        "truncation": "longest_first",
        "padding": "longest",
        "pad_id": int(pad_id),
        "pad_token": str(tok.pad_token),
        "pad_type_id": int(getattr(tok, "pad_token_type_id", 0) or 0),
    }


def _example_inputs(model: PromptedModel) -> dict[str, torch.Tensor]:
    texts: list[TextInput] = [
        "an example sentence for tracing the graph",
        ("a premise of middling length", "and a hypothesis"),
        "short",
    ]
    if model.prompt is not None and model.prompt.uses_features:
        return model.encoder.tokenize(texts)
    ones = torch.ones(3, 4, dtype=torch.long)
    return {"input_ids": ones, "attention_mask": ones.clone()}


# ---------------------------------------------------------------------------- main entry points
def export_model(
    model: PromptedModel,
    out: str | os.PathLike[str],
    *,
    parity_texts: Sequence[TextInput],
    parity_data: EncodedDataset | None = None,
    task: str | None = None,
    int8: bool = False,
    int8_mode: str = "balanced",
    opset: int = DEFAULT_OPSET,
    force: bool = False,
    tolerance: float = FP32_TOLERANCE,
    frozen_max_length: int = 256,
    source: dict[str, Any] | None = None,
    batch_size: int = 32,
) -> dict[str, Any]:
    """Export ``model``'s prompt generator to ``out`` and return the ``export.json`` content.

    Parameters
    ----------
    model : PromptedModel
        A model with a prompt generator (PT, IDPG, LoPA or a LoPA variant).
    out : path
        Output directory; must be empty or absent unless ``force``.
    parity_texts : sequence of str or (str, str | None)
        Real inputs for the fp32/int8 ``Z`` parity check (as the instance encoder sees them).
    parity_data : EncodedDataset, optional
        Real labelled examples for the prediction-agreement check through the frozen model.
    task : str, optional
        Task name recorded for the model host (``lopa-fed infer``).
    int8 : bool
        Also write ``prompt_generator.int8.onnx`` (dynamic per-channel int8).
    int8_mode : str
        ``"balanced"`` or ``"full"``; see :func:`quantize_int8`.
    opset : int
        ONNX opset version.
    force : bool
        Overwrite an existing export in ``out``.
    tolerance : float
        Maximum allowed fp32 ``|Z_onnx - Z_torch|``; export fails above it.
    frozen_max_length : int
        Token limit the model host uses for the frozen model (recorded).
    source : dict, optional
        Provenance recorded as ``source`` (checkpoint path, client state, ...).
    batch_size : int
        Batch size for the parity runs.

    Returns
    -------
    dict
        The sidecar written to ``out/export.json``.

    Raises
    ------
    ExportError
        On an existing output without ``force``, an exporter/checker failure, or fp32 parity
        above ``tolerance`` (nothing is written to ``out`` then).
    """
    out = Path(out)
    gen = model.prompt
    if gen is None:
        raise ExportError(f"method {model.config.method!r} has no prompt generator; nothing to export")
    if len(parity_texts) == 0:
        raise ExportError("parity check needs at least one real example text")
    _check_output_dir(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    cfg: LoPAConfig = model.config
    enc = model.encoder if gen.uses_features else None
    graph = PromptGraph(gen, enc.net if enc is not None else None).eval()
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        fp32_path = stage / FP32_FILE
        export_onnx(graph, fp32_path, _example_inputs(model), opset)
        tok_meta = _tokenizer_meta(enc, stage) if enc is not None else None
        files = {FP32_FILE: _file_entry(fp32_path)}
        if tok_meta is not None:
            files[TOKENIZER_FILE] = _file_entry(stage / TOKENIZER_FILE)
        if model.head is not None:
            from lopa_fed.checkpoint import save_tensors

            save_tensors(
                stage / HOST_FILE, model.state([n for n in model.named_trainable() if n.startswith("head.")])
            )
            files[HOST_FILE] = _file_entry(stage / HOST_FILE)
        meta: dict[str, Any] = {
            "format": FORMAT,
            "method": cfg.method,
            "m": cfg.m,
            "r": cfg.r if cfg.method.startswith("lopa") else None,
            "hidden": cfg.hidden if cfg.method != "pt" else None,
            "num_tokens": cfg.num_tokens,
            "d": int(gen.d),
            "h": int(gen.h) if gen.uses_features else None,
            "uses_features": bool(gen.uses_features),
            "lopa": cfg.to_dict(),
            "encoder": None
            if enc is None
            else {
                "identity": enc.identity,
                "hidden_size": enc.hidden_size,
                "pooling": enc.net.pooler.mode,
                "normalize": bool(enc.net.pooler.normalize),
                "max_length": enc.max_length,
            },
            "tokenizer": tok_meta,
            "frozen_model": {
                "identity": model.frozen.identity,
                "kind": model.frozen.kind,
                "d": model.frozen.d,
                "embedding_sha256": model.frozen.embedding_hash(),
            },
            "frozen_max_length": int(frozen_max_length),
            "task": task,
            "num_labels": model.num_labels,
            "label_words": list(model.label_words)
            or (list(get_task(task).label_words) if task and not is_code_task(task) else []),
            "onnx": {
                "exporter": "torch.onnx.export(dynamo=True)",
                "opset": opset,
                "inputs": [{"name": n, "dtype": "int64", "shape": ["batch", "seq"]} for n in INPUT_NAMES],
                "outputs": [
                    {"name": OUTPUT_NAME, "dtype": "float32", "shape": ["batch", cfg.num_tokens, int(gen.d)]}
                ],
            },
            "files": files,
            "source": source or {},
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "versions": _versions(),
        }
        (stage / SIDECAR).write_text(json.dumps(meta, indent=2))

        # ---- fp32 parity on real examples, through the real runtime (its own tokenizer)
        texts = list(parity_texts)
        ref = torch_prompts(model, texts, batch_size)
        rt32 = PromptRuntime(stage)
        z32 = rt32.prompts(texts, batch_size=batch_size)
        fp32 = {"examples": len(texts), "tolerance": tolerance, **z_diff(ref, z32)}
        fp32["passed"] = bool(fp32["max_abs_diff"] <= tolerance)
        if not fp32["passed"]:
            raise ExportError(
                f"fp32 parity check failed: max |Z_onnx - Z_torch| = {fp32['max_abs_diff']:.3g} over "
                f"{len(texts)} real examples exceeds the tolerance {tolerance:g} (mean {fp32['mean_abs_diff']:.3g}). "
                "The ONNX graph does not reproduce the PyTorch generator; nothing was written to "
                f"{out}. Check the opset / exporter version, or report the method ({cfg.method})."
            )
        parity: dict[str, Any] = {"fp32": fp32}
        runtimes = {"fp32": rt32}
        if int8:
            int8_path = stage / INT8_FILE
            meta["int8"] = quantize_int8(fp32_path, int8_path, int8_mode)
            meta["files"][INT8_FILE] = _file_entry(int8_path)
            (stage / SIDECAR).write_text(json.dumps(meta, indent=2))
            rt8 = PromptRuntime(stage, int8=True)
            z8 = rt8.prompts(texts, batch_size=batch_size)
            parity["int8"] = {"examples": len(texts), "vs": "torch fp32", **z_diff(ref, z8)}
            runtimes["int8"] = rt8
        if parity_data is not None and len(parity_data) > 0:
            preds = prediction_parity(model, parity_data, runtimes, batch_size)
            parity["predictions"] = {
                "examples": len(parity_data),
                "task": task,
                "batch_size": batch_size,
                **preds,
            }
            for name in runtimes:
                parity[name]["prediction_agreement"] = preds[name]["agreement"]
            bad = preds["fp32"]["disagreements_beyond_ties"]
            if bad:
                raise ExportError(
                    f"fp32 prediction check failed: {bad} of {len(parity_data)} real dev examples get a different "
                    "prediction from the ONNX prompt than from the PyTorch prompt although their PyTorch logit "
                    f"margin is at least {preds['torch']['tie_margin']:g}; nothing was written to {out}."
                )
        meta["parity"] = parity
        (stage / SIDECAR).write_text(json.dumps(meta, indent=2))
        del rt32, runtimes
        _install(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return meta


def load_model_for_export(
    checkpoint: str | os.PathLike[str],
    client_state: str | os.PathLike[str] | None = None,
    model: str | None = None,
    encoder: str | None = None,
) -> tuple[PromptedModel, dict[str, Any]]:
    """Rebuild the :class:`PromptedModel` a checkpoint was trained with and load its tensors.

    Parameters
    ----------
    checkpoint : path
        A checkpoint directory (``config.json`` + ``shared.safetensors`` [+ ``private.safetensors``]).
    client_state : path, optional
        A federated client's private tensors (safetensors, same names as ``private.safetensors``),
        which replace the checkpoint's private tensors; the shared tensors stay global.
    model, encoder : str, optional
        Override the frozen model / instance encoder names (default: the recorded identities).

    Returns
    -------
    (PromptedModel, dict)
        The loaded model (eval mode) and the checkpoint config.
    """
    cfg = read_config(checkpoint)
    lcfg = LoPAConfig.from_dict(cfg["lopa"])
    if not lcfg.has_generator:
        raise ExportError(
            f"checkpoint {checkpoint} was trained with {lcfg.method!r}, which has no prompt generator"
        )
    frozen = FrozenModel.load(model or name_for_identity(cfg["frozen_model"]), cfg.get("frozen_kind", "auto"))
    enc = None
    if lcfg.method != "pt":
        if not cfg.get("encoder"):
            raise CheckpointError(
                f"checkpoint {checkpoint} records no instance encoder for method {lcfg.method!r}"
            )
        enc = InstanceEncoder.load(encoder or name_for_identity(cfg["encoder"]))
    pm = PromptedModel(
        frozen,
        lcfg,
        num_labels=int(cfg.get("num_labels", 0)),
        label_words=tuple(cfg.get("label_words") or ()),
        encoder=enc,
    )
    has_private = bool(pm.private_names())
    load_checkpoint(checkpoint, pm, private=has_private and client_state is None)
    if client_state is not None:
        tensors = load_tensors(client_state)
        want = set(pm.private_names())
        if set(tensors) != want:
            raise CheckpointError(
                f"client state {client_state} holds {sorted(tensors)} but method {lcfg.method!r} has private "
                f"tensors {sorted(want)}"
            )
        pm.load_state(tensors)
    return pm.eval(), cfg


def _checkpoint_source(checkpoint: Path, client_state: str | os.PathLike[str] | None) -> dict[str, Any]:
    src: dict[str, Any] = {"checkpoint": str(checkpoint.resolve())}
    for name in ("shared.safetensors", "private.safetensors"):
        if (checkpoint / name).is_file():
            src[name.split(".")[0] + "_sha256"] = sha256_file(checkpoint / name)
    if client_state is not None:
        src["client_state"] = str(Path(client_state).resolve())
        src["client_state_sha256"] = sha256_file(client_state)
    return src


def dev_examples(task: Task, model: PromptedModel, limit: int | None, max_length: int) -> EncodedDataset:
    """The first ``limit`` examples of ``task``'s real dev set, encoded for the frozen model."""
    examples = task.read("dev", limit=limit)
    return encode_examples(examples, task, model.frozen, max_length)


def export_checkpoint(
    checkpoint: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    client_state: str | os.PathLike[str] | None = None,
    int8: bool = False,
    int8_mode: str = "balanced",
    opset: int = DEFAULT_OPSET,
    force: bool = False,
    task: str | None = None,
    parity_examples: int = 64,
    agreement_examples: int | None = None,
    model: str | None = None,
    encoder: str | None = None,
    tolerance: float = FP32_TOLERANCE,
) -> dict[str, Any]:
    """Export a checkpoint (optionally with a client's private state); see :func:`export_model`.

    ``parity_examples`` real dev examples are used for the ``Z`` parity check and
    ``agreement_examples`` (default: the whole dev set) for prediction agreement.
    """
    checkpoint = Path(checkpoint)
    if not (checkpoint / "config.json").is_file() and (checkpoint / "checkpoint" / "config.json").is_file():
        checkpoint = checkpoint / "checkpoint"  # a `lopa-fed train --out DIR` run directory
    _check_output_dir(Path(out), force)  # fail before loading models
    pm, cfg = load_model_for_export(checkpoint, client_state, model, encoder)
    task_name = task or cfg.get("task")
    if not task_name:
        raise ExportError(
            f"checkpoint {checkpoint} records no task; pass --task so the parity check can use its real dev set"
        )
    train_cfg = cfg.get("train") if isinstance(cfg.get("train"), dict) else {}
    max_length = int(train_cfg.get("max_length", 256))
    if is_code_task(task_name):
        # Code tasks: Z parity on real prompts of the test half (what the instance encoder reads);
        # there are no class predictions to compare.
        code = get_code_task(task_name)
        _, test = code.split(code.read(None), seed=int(train_cfg.get("seed", 9876)))
        texts: list = [(ex.prompt, None) for ex in test[:parity_examples]]
        data, name = None, code.name
    else:
        t = get_task(task_name)
        data = dev_examples(t, pm, agreement_examples, max_length)
        texts = [it.enc_text for it in data.items[:parity_examples]]
        name = t.name
    return export_model(
        pm,
        out,
        parity_texts=texts,
        parity_data=data,
        task=name,
        int8=int8,
        int8_mode=int8_mode,
        opset=opset,
        force=force,
        tolerance=tolerance,
        frozen_max_length=max_length,
        source=_checkpoint_source(checkpoint, client_state),
    )


def summarize(meta: dict[str, Any]) -> str:
    """A few human-readable lines about an export (for the CLI)."""
    lines = [f"method {meta['method']}  m={meta['m']} r={meta.get('r')} T={meta['num_tokens']} d={meta['d']}"]
    for name, f in meta["files"].items():
        lines.append(f"  {name:28s} {f['bytes'] / 1e6:8.2f} MB")
    p = meta.get("parity", {})
    if "fp32" in p:
        lines.append(
            f"fp32 parity: max|ΔZ| {p['fp32']['max_abs_diff']:.2e} (≤ {p['fp32']['tolerance']:g}) on {p['fp32']['examples']} dev examples"
        )
    if "int8" in p:
        lines.append(
            f"int8 mode {meta['int8']['mode']}: {len(meta['int8']['fp32_nodes'])} weight MatMuls kept in fp32"
        )
        lines.append(f"int8: max|ΔZ| {p['int8']['max_abs_diff']:.3g}, mean {p['int8']['mean_abs_diff']:.3g}")
    if "predictions" in p:
        pr = p["predictions"]
        for k in ("fp32", "int8"):
            if k in pr:
                ties = ""
                if pr[k]["disagreements"]:
                    ties = f", {pr[k]['disagreements_beyond_ties']} beyond numerical ties"
                lines.append(
                    f"{k} predictions vs torch on {pr['examples']} dev examples: agreement {pr[k]['agreement']:.2%} "
                    f"({pr[k]['disagreements']} differ{ties}), accuracy {pr[k]['accuracy']:.4f} "
                    f"(torch {pr['torch']['accuracy']:.4f})"
                )
    return "\n".join(lines)


__all__ = [
    "ExportError",
    "PromptGraph",
    "export_checkpoint",
    "export_model",
    "export_onnx",
    "load_model_for_export",
    "quantize_int8",
    "summarize",
]
