"""The export pipeline: model → staged export directory → parity checks → swapped in whole.

Stages, each owned by one module::

    PromptedModel ─graph.build_graph─► PromptGraph ─onnx_export─► prompt_generator.onnx
                  ─sidecar.write_tokenizer─► tokenizer.json      ─host─► host.safetensors
                  ─sidecar.describe─► export.json
    real dev texts ─parity (fp32 Z, int8 Z via quantize, predictions)─► export.json["parity"]

Everything is written into a temporary sibling of the output directory
(:func:`lopa_fed.atomic.staged_dir`), which replaces the output only when every check
passed: a failed export leaves the previous one untouched.

Entry points: :func:`export_model` (an in-memory model), :func:`export_checkpoint` (a
``lopa-fed train`` checkpoint, optionally with one client's private state) and
:func:`export_run` (one client of a federated run: the last round's global tensors plus
that client's private state).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lopa_fed.atomic import staged_dir
from lopa_fed.checkpoint import load_model, read_config
from lopa_fed.config import LoPAConfig
from lopa_fed.data import EncodedDataset
from lopa_fed.model import PromptedModel
from lopa_fed.tasks import Task, get_task

from .errors import ExportError
from .federated import load_client
from .graph import build_graph, example_inputs
from .host import HOST_FILE, write_host_tensors
from .onnx_export import DEFAULT_OPSET, check_opset, export_onnx
from .parity import prediction_parity, torch_prompts, z_diff
from .quantize import check_int8_mode, quantize_int8
from .quantize_static import quantize_static_int8
from .runtime import FP32_FILE, INT8_FILE, TOKENIZER_FILE, PromptRuntime, TextInput, sha256_file
from .sidecar import describe, file_entry, write_sidecar, write_tokenizer
from .web_bundle import WEB_DIR, find_node_modules, write_web_bundle

__all__ = ["DEFAULT_OPSET", "FP32_TOLERANCE", "ExportOptions", "export_checkpoint", "export_model", "export_run"]

#: Largest allowed fp32 ``|Z_onnx - Z_torch|`` on the real parity texts.
FP32_TOLERANCE = 1e-4
#: Real train examples that calibrate ``--int8-mode static``.
CALIBRATION_EXAMPLES = 256


@dataclass(frozen=True)
class ExportOptions:
    """What to write and how strictly to check it.

    Attributes
    ----------
    int8 : bool
        Also write ``prompt_generator.int8.onnx`` (see :func:`export.quantize.quantize_int8`).
    int8_mode : str
        ``"balanced"`` or ``"full"``.
    opset : int
        ONNX opset (18 to the installed onnx's highest).
    force : bool
        Replace an existing export in the output directory.
    tolerance : float
        Largest allowed fp32 ``|Z_onnx - Z_torch|``; the export fails above it.
    batch_size : int
        Batch size of the parity runs.
    web : bool
        Also write the static browser bundle ``web/`` (:mod:`export.web_bundle`), with the int8
        graph when ``int8`` is set, else the fp32 graph.
    web_modules : str, optional
        node_modules folder holding onnxruntime-web and transformers.js (default:
        :func:`export.web_bundle.default_node_modules`).
    calibration_examples : int
        Real train examples that calibrate ``int8_mode="static"``.
    """

    int8: bool = False
    int8_mode: str = "balanced"
    opset: int = DEFAULT_OPSET
    force: bool = False
    tolerance: float = FP32_TOLERANCE
    batch_size: int = 32
    web: bool = False
    web_modules: str | None = None
    calibration_examples: int = CALIBRATION_EXAMPLES

    def check(self) -> ExportOptions:
        """``self`` if every option is valid (ConfigError / ExportError otherwise)."""
        check_opset(self.opset)
        check_int8_mode(self.int8_mode)
        if self.web:
            find_node_modules(self.web_modules)  # before any model is loaded or exported
        return self


# ---------------------------------------------------------------------------- in-memory model
def export_model(
    model: PromptedModel,
    out: str | os.PathLike[str],
    *,
    parity_texts: Sequence[TextInput],
    parity_data: EncodedDataset | None = None,
    task: str | None = None,
    frozen_max_length: int = 256,
    source: dict[str, Any] | None = None,
    **options: Any,
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
    frozen_max_length : int
        Token limit the model host uses for the frozen model (recorded).
    source : dict, optional
        Provenance recorded as ``source`` (checkpoint path, client state, run, ...).
    **options
        Fields of :class:`ExportOptions` (``int8``, ``int8_mode``, ``opset``, ``force``,
        ``tolerance``, ``batch_size``, ``web``, ``web_modules``).

    Returns
    -------
    dict
        The sidecar written to ``out/export.json``.

    Raises
    ------
    ExportError
        On an existing output without ``force``, an exporter/checker failure, or fp32 parity
        above ``tolerance`` (``out`` is left as it was then).
    """
    opts = ExportOptions(**options).check()
    out = check_output_dir(Path(out), opts.force)
    build_graph(model)  # fails early for a method without a generator
    texts = list(parity_texts)
    if not texts:
        raise ExportError("parity check needs at least one real example text")
    model.eval()
    with staged_dir(out) as stage:
        meta = _write_files(model, stage, opts.opset, task, frozen_max_length, source)
        meta["parity"] = _check_parity(model, stage, meta, texts, parity_data, opts, out)
        if opts.web:
            meta["web"] = write_web_bundle(stage, stage / WEB_DIR, int8=opts.int8, node_modules=opts.web_modules)
        write_sidecar(stage, meta)
    return meta


def check_output_dir(out: Path, force: bool) -> Path:
    """``out`` if an export may be written there: absent, an empty directory, or ``force``."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"output {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ExportError(f"output directory {out} is not empty; pass --force to overwrite the export in it")
    return out


def _write_files(
    model: PromptedModel, stage: Path, opset: int, task: str | None, frozen_max_length: int, source: dict | None
) -> dict[str, Any]:
    """Write the ONNX graph, tokenizer, host tensors and a first ``export.json`` into ``stage``."""
    written = export_onnx(build_graph(model), stage / FP32_FILE, example_inputs(model), opset)
    files = {FP32_FILE: file_entry(stage / FP32_FILE)}
    tokenizer = write_tokenizer(model.encoder, stage) if model.prompt.uses_features else None
    if tokenizer is not None:
        files[TOKENIZER_FILE] = file_entry(stage / TOKENIZER_FILE)
    if write_host_tensors(model, stage / HOST_FILE):
        files[HOST_FILE] = file_entry(stage / HOST_FILE)
    meta = describe(
        model, files=files, tokenizer=tokenizer, opset=written, task=task,
        frozen_max_length=frozen_max_length, source=source,
    )
    write_sidecar(stage, meta)  # the runtimes of the parity checks read it
    return meta


# ---------------------------------------------------------------------------- parity checks
def _check_parity(
    model: PromptedModel,
    stage: Path,
    meta: dict[str, Any],
    texts: list[TextInput],
    data: EncodedDataset | None,
    opts: ExportOptions,
    out: Path,
) -> dict[str, Any]:
    """Z parity (fp32, int8) on ``texts`` and prediction agreement on ``data``, through the real runtime."""
    ref = torch_prompts(model, texts, opts.batch_size)  # N×T×d
    runtimes = {"fp32": PromptRuntime(stage)}
    parity: dict[str, Any] = {"fp32": _fp32_parity(ref, runtimes["fp32"], texts, opts, model.config.method, out)}
    if opts.int8:
        if opts.int8_mode == "static":
            feeds = calibration_feeds(model, runtimes["fp32"], meta, opts.calibration_examples)
            meta["int8"] = quantize_static_int8(stage / FP32_FILE, stage / INT8_FILE, feeds)
        else:
            meta["int8"] = quantize_int8(stage / FP32_FILE, stage / INT8_FILE, opts.int8_mode)
        meta["files"][INT8_FILE] = file_entry(stage / INT8_FILE)
        write_sidecar(stage, meta)
        runtimes["int8"] = PromptRuntime(stage, int8=True)
        z8 = runtimes["int8"].prompts(texts, batch_size=opts.batch_size)
        parity["int8"] = {"examples": len(texts), "vs": "torch fp32", **z_diff(ref, z8)}
    if data is not None and len(data) > 0:
        parity["predictions"] = _prediction_parity(model, data, runtimes, meta["task"], opts.batch_size, out)
        for name in runtimes:
            parity[name]["prediction_agreement"] = parity["predictions"][name]["agreement"]
    return parity


def calibration_feeds(
    model: PromptedModel, runtime: PromptRuntime, meta: dict[str, Any], n: int = CALIBRATION_EXAMPLES
) -> list[dict[str, Any]]:
    """Static int8 calibration inputs: the encoder inputs (``1×L`` feeds) of the first ``n`` real train examples."""
    task = get_task(meta.get("task") or "sst2")
    data = task.encode(task.read("train", limit=n), model.frozen, int(meta.get("frozen_max_length") or 256))
    return [runtime.encode([it.enc_text]) for it in data.items]


def _fp32_parity(
    ref: Any, runtime: PromptRuntime, texts: list[TextInput], opts: ExportOptions, method: str, out: Path
) -> dict[str, Any]:
    """``max|Z_onnx - Z_torch|`` over ``texts``; ExportError above the tolerance."""
    z = runtime.prompts(texts, batch_size=opts.batch_size)
    fp32 = {"examples": len(texts), "tolerance": opts.tolerance, **z_diff(ref, z)}
    fp32["passed"] = bool(fp32["max_abs_diff"] <= opts.tolerance)
    if not fp32["passed"]:
        raise ExportError(
            f"fp32 parity check failed: max |Z_onnx - Z_torch| = {fp32['max_abs_diff']:.3g} over "
            f"{len(texts)} real examples exceeds the tolerance {opts.tolerance:g} (mean {fp32['mean_abs_diff']:.3g}). "
            f"The ONNX graph does not reproduce the PyTorch generator; nothing was written to {out}. "
            f"Check the opset / exporter version, or report the method ({method})."
        )
    return fp32


def _prediction_parity(
    model: PromptedModel, data: EncodedDataset, runtimes: dict, task: str | None, batch_size: int, out: Path
) -> dict[str, Any]:
    """Frozen-model predictions from each runtime's Z against PyTorch's; ExportError on a real fp32 flip."""
    preds = prediction_parity(model, data, runtimes, batch_size)
    bad = preds["fp32"]["disagreements_beyond_ties"]
    if bad:
        raise ExportError(
            f"fp32 prediction check failed: {bad} of {len(data)} real dev examples get a different "
            "prediction from the ONNX prompt than from the PyTorch prompt although their PyTorch logit "
            f"margin is at least {preds['torch']['tie_margin']:g}; nothing was written to {out}."
        )
    return {"examples": len(data), "task": task, "batch_size": batch_size, **preds}


# ---------------------------------------------------------------------------- real dev data
def parity_inputs(
    task: Task, model: PromptedModel, parity_examples: int, agreement_examples: int | None, max_length: int, seed: int
) -> tuple[list[TextInput], EncodedDataset | None]:
    """Real texts for the Z check and, for tasks with class labels, labelled data for predictions.

    GLUE: the first ``agreement_examples`` dev examples (all by default) are encoded; the Z check
    uses the encoder texts of the first ``parity_examples`` of them. Tasks without class labels
    (code): the encoder texts (the prompts) of the first ``parity_examples`` test-half problems.

    Returns
    -------
    (texts, data)
        ``texts``: N ``(text_a, text_b | None)``; ``data``: the encoded labelled examples, or ``None``.
    """
    labelled = task.num_labels > 0
    limit = agreement_examples if labelled else parity_examples
    data = task.encode(task.read("dev", limit=limit, seed=seed), model.frozen, max_length)
    texts = [it.enc_text for it in data.items[:parity_examples]]
    return texts, (data if labelled else None)


def _export_for_task(
    pm: PromptedModel,
    out: str | os.PathLike[str],
    task: Task,
    *,
    max_length: int,
    seed: int,
    parity_examples: int,
    agreement_examples: int | None,
    source: dict[str, Any],
    options: dict[str, Any],
) -> dict[str, Any]:
    texts, data = parity_inputs(task, pm, parity_examples, agreement_examples, max_length, seed)
    return export_model(
        pm, out, parity_texts=texts, parity_data=data, task=task.name, frozen_max_length=max_length,
        source=source, **options,
    )


# ---------------------------------------------------------------------------- checkpoints and runs
def export_checkpoint(
    checkpoint: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    client_state: str | os.PathLike[str] | None = None,
    task: str | None = None,
    parity_examples: int = 64,
    agreement_examples: int | None = None,
    model: str | None = None,
    encoder: str | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Export a checkpoint (optionally with a client's private state); see :func:`export_model`.

    Parameters
    ----------
    checkpoint : path
        A checkpoint directory or a ``lopa-fed train --out`` run directory holding ``checkpoint/``.
    out : path
        Output directory.
    client_state : path, optional
        A federated client's private tensors, loaded instead of the checkpoint's.
    task : str, optional
        Task whose real dev set the parity checks use (default: the checkpoint's).
    parity_examples, agreement_examples : int
        Real dev examples for the ``Z`` check and for prediction agreement (default: all).
    model, encoder : str, optional
        Override the recorded frozen model / instance encoder.
    **options
        Fields of :class:`ExportOptions`.
    """
    ExportOptions(**options).check()
    check_output_dir(Path(out), bool(options.get("force")))  # fail before loading models
    ck = _checkpoint_dir(Path(checkpoint))
    cfg = read_config(ck)
    if not LoPAConfig.from_dict(cfg["lopa"]).has_generator:
        raise ExportError(f"checkpoint {ck} was trained with {cfg['lopa'].get('method')!r}, which has no prompt generator")
    if not (task or cfg.get("task")):
        raise ExportError(f"checkpoint {ck} records no task; pass --task so the parity check can use its real dev set")
    pm, ck_task, cfg = load_model(ck, client_state, model=model, encoder=encoder)
    t = get_task(task) if task else ck_task
    train = cfg.get("train") if isinstance(cfg.get("train"), dict) else {}
    return _export_for_task(
        pm, out, t, max_length=int(train.get("max_length") or t.defaults.max_length),
        seed=int(train.get("seed", 9876)), parity_examples=parity_examples, agreement_examples=agreement_examples,
        source=checkpoint_source(ck, client_state), options=options,
    )


def export_run(
    run: str | os.PathLike[str],
    partition: int,
    out: str | os.PathLike[str],
    *,
    parity_examples: int = 64,
    agreement_examples: int | None = None,
    model: str | None = None,
    encoder: str | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Export client ``partition``'s personalised generator from a federated run directory.

    The model is rebuilt from the run's recorded settings, with the global shared tensors of
    the last round and that client's private state (:func:`export.federated.load_client`).
    Parameters are as in :func:`export_checkpoint`.
    """
    ExportOptions(**options).check()
    check_output_dir(Path(out), bool(options.get("force")))
    client = load_client(run, partition, model=model, encoder=encoder)
    return _export_for_task(
        client.model, out, client.task, max_length=client.max_length, seed=client.seed,
        parity_examples=parity_examples, agreement_examples=agreement_examples, source=client.source,
        options=options,
    )


def _checkpoint_dir(path: Path) -> Path:
    """``path``, or ``path/checkpoint`` for a ``lopa-fed train --out`` run directory."""
    if not (path / "config.json").is_file() and (path / "checkpoint" / "config.json").is_file():
        return path / "checkpoint"
    return path


def checkpoint_source(checkpoint: Path, client_state: str | os.PathLike[str] | None) -> dict[str, Any]:
    """Provenance of a checkpoint export: paths and SHA-256 of the tensor files used."""
    src: dict[str, Any] = {"checkpoint": str(checkpoint.resolve())}
    for name in ("shared.safetensors", "private.safetensors"):
        if (checkpoint / name).is_file():
            src[name.split(".")[0] + "_sha256"] = sha256_file(checkpoint / name)
    if client_state is not None:
        src["client_state"] = str(Path(client_state).resolve())
        src["client_state_sha256"] = sha256_file(client_state)
    return src
