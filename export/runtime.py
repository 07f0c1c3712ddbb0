"""Torch-free edge runtime: text → soft prompt ``Z`` with ``tokenizers`` + ``onnxruntime`` + ``numpy``.

A device that holds an export directory (written by ``lopa-fed export``)::

    prompt_generator.onnx        # token ids + mask → frozen encoder → pooling → heads → gate → Z
    prompt_generator.int8.onnx   # optional dynamically quantised copy
    tokenizer.json               # the instance encoder's tokenizer (absent for PT)
    export.json                  # the sidecar: method, shapes, tokenizer settings, hashes, parity

computes its personal soft prompt with::

    from export.runtime import PromptRuntime
    z = PromptRuntime("DIR", threads=1).prompts(["a sentence", ("premise", "hypothesis")])  # B×T×d

and sends ``z`` (plus its text) to the model host, which stores nothing per user.

This module imports only the standard library, ``numpy``, ``onnxruntime`` and
``tokenizers`` (plus the dependency-free ``lopa_fed.errors`` when it is installed);
importing it never imports torch or transformers.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

#: Sidecar format written by :mod:`export.sidecar`.
FORMAT = "lopa-fed-export/1"
SIDECAR = "export.json"
FP32_FILE = "prompt_generator.onnx"
INT8_FILE = "prompt_generator.int8.onnx"
TOKENIZER_FILE = "tokenizer.json"
INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAME = "z"

TextInput = str | tuple[str, str | None]

_OPT_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}
_ORT_DTYPES = {"tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(float)": "float32"}


try:  # a device may hold only this module: then the error has no lopa_fed base class
    from lopa_fed.errors import LoPAError as _ErrorBase
except ImportError:  # pragma: no cover - exercised by the torch-free subprocess tests

    class _ErrorBase(Exception):  # type: ignore[no-redef]
        """Stands in for ``lopa_fed.errors.LoPAError`` where lopa_fed is not installed."""


class ExportFormatError(_ErrorBase, ValueError):
    """An export directory is missing a file, holds a corrupt file, or its files disagree.

    The message names the file and what is wrong with it. It is a
    :class:`lopa_fed.errors.LoPAError` wherever ``lopa_fed`` is installed.
    """


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_sidecar(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and sanity-check ``export.json`` of an export directory.

    Raises
    ------
    ExportFormatError
        If the file is missing, is not JSON, or has the wrong format or missing keys.
    """
    p = Path(directory) / SIDECAR
    if not Path(directory).is_dir():
        raise ExportFormatError(f"export directory {directory} does not exist")
    if not p.is_file():
        raise ExportFormatError(f"{directory} is not a lopa-fed export: {SIDECAR} is missing")
    try:
        meta = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ExportFormatError(f"{p} is not valid JSON: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ExportFormatError(f"{p}: unknown format {got!r}; expected {FORMAT!r}")
    missing = [
        k for k in ("method", "m", "d", "num_tokens", "uses_features", "onnx", "files") if k not in meta
    ]
    if missing:
        raise ExportFormatError(f"{p} lacks required key(s) {missing}")
    return meta


def _to_pairs(texts: Sequence[TextInput]) -> list[str | tuple[str, str]]:
    """Validate texts / ``(a, b)`` pairs; a pair without a second segment becomes a single text.

    Mirrors :meth:`lopa_fed.encoder.InstanceEncoder.tokenize`: every item is tokenised as
    what it is, whatever else is in the batch.
    """
    a: list[str] = []
    b: list[str | None] = []
    for i, t in enumerate(texts):
        if isinstance(t, str):
            a.append(t)
            b.append(None)
        elif (
            isinstance(t, (tuple, list))
            and len(t) == 2
            and isinstance(t[0], str)
            and (t[1] is None or isinstance(t[1], str))
        ):
            a.append(t[0])
            b.append(t[1])
        else:
            raise TypeError(
                f"text {i} must be a str or a (str, str | None) pair, got {type(t).__name__}: {t!r:.80}"
            )
    return [x if y is None else (x, y) for x, y in zip(a, b)]


class PromptRuntime:
    """Compute soft prompts ``Z`` on a device from an export directory.

    Parameters
    ----------
    directory : str or PathLike
        An export directory written by ``lopa-fed export``.
    threads : int, optional
        onnxruntime intra-op threads (``None``: onnxruntime's default, all cores).
    int8 : bool
        Use ``prompt_generator.int8.onnx`` instead of the fp32 file.
    verify_hash : bool
        Check the ONNX and tokenizer files against the SHA-256 recorded in ``export.json``.
    optimization : str, optional
        onnxruntime graph optimisation level: ``"disable"``, ``"basic"``, ``"extended"`` or ``"all"``.
        Default: ``"basic"``, or for the int8 file the level ``export.json`` records for it
        (``"extended"`` for static QDQ int8, whose integer kernels only exist after fusion).
        ``"basic"`` keeps the arithmetic closest to PyTorch (fused attention and layer-norm kernels
        of ``"extended"``/``"all"`` move fp32 logits by ~1e-6, enough to flip an exactly tied
        prediction) and was not slower here.

    Raises
    ------
    ExportFormatError
        A file is missing or corrupt, or ``export.json`` disagrees with the ONNX graph's
        inputs/outputs or with the files' hashes.

    Examples
    --------
    >>> rt = PromptRuntime("exports/sst2-lopa", threads=1)      # doctest: +SKIP
    >>> rt.prompts(["a gorgeous film"]).shape                    # doctest: +SKIP
    (1, 10, 384)
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        threads: int | None = None,
        int8: bool = False,
        verify_hash: bool = True,
        optimization: str | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.meta = read_sidecar(self.directory)
        self.int8 = bool(int8)
        fname = INT8_FILE if int8 else FP32_FILE
        self.model_path = self.directory / fname
        files = self.meta["files"]
        if fname not in files:
            hint = " (export with --int8 to create it)" if int8 else ""
            raise ExportFormatError(f"{self.directory / SIDECAR} lists no {fname}{hint}")
        if not self.model_path.is_file():
            raise ExportFormatError(f"ONNX file {self.model_path} is missing")
        if verify_hash:
            self._check_hash(fname)
        self.method: str = self.meta["method"]
        self.num_tokens: int = int(self.meta["num_tokens"])
        self.d: int = int(self.meta["d"])
        self.uses_features: bool = bool(self.meta["uses_features"])

        # ---- tokenizer
        self.tokenizer: Tokenizer | None = None
        self.max_length: int | None = None
        if self.uses_features:
            self.tokenizer = self._load_tokenizer(verify_hash)

        # ---- session
        so = ort.SessionOptions()
        if threads is not None:
            if int(threads) < 1:
                raise ValueError(f"threads must be >= 1, got {threads!r}")
            so.intra_op_num_threads = int(threads)
            so.inter_op_num_threads = 1
        if optimization is None:
            optimization = str((self.meta.get("int8") or {}).get("optimization", "basic")) if int8 else "basic"
        if optimization not in _OPT_LEVELS:
            raise ValueError(f"optimization must be one of {sorted(_OPT_LEVELS)}, got {optimization!r}")
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _OPT_LEVELS[optimization])
        self.threads = threads
        try:
            self.session = ort.InferenceSession(
                str(self.model_path), sess_options=so, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own exception types (Fail, InvalidProtobuf, ...)
            raise ExportFormatError(f"{self.model_path} is not a loadable ONNX model: {exc}") from exc
        self._validate_signature()

    # ------------------------------------------------------------------ loading and validation
    def _check_hash(self, fname: str) -> None:
        want = self.meta["files"][fname].get("sha256")
        if want and sha256_file(self.directory / fname) != want:
            raise ExportFormatError(
                f"{self.directory / fname} does not match {SIDECAR} (sha256 differs): the file was replaced "
                "or corrupted after export; re-export or restore it"
            )

    def _load_tokenizer(self, verify_hash: bool) -> Tokenizer:
        tmeta = self.meta.get("tokenizer") or {}
        path = self.directory / tmeta.get("file", TOKENIZER_FILE)
        if not path.is_file():
            raise ExportFormatError(
                f"tokenizer file {path} is missing; the runtime needs it to tokenise text"
            )
        if verify_hash and tmeta.get("sha256") and sha256_file(path) != tmeta["sha256"]:
            raise ExportFormatError(
                f"{path} does not match {SIDECAR} (sha256 differs); re-export or restore it"
            )
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception on parse errors
            raise ExportFormatError(f"{path} is not a valid tokenizers file: {exc}") from exc
        try:
            self.max_length = int(tmeta["max_length"])
            pad_id, pad_token = int(tmeta["pad_id"]), str(tmeta["pad_token"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ExportFormatError(
                f"{self.directory / SIDECAR}: 'tokenizer' needs max_length, pad_id and pad_token"
            ) from exc
        # Settings stored inside tokenizer.json (e.g. MiniLM's fixed padding to 128) are
        # replaced by exactly what the PyTorch path uses: longest-first truncation, pad to longest.
        tok.no_padding()
        tok.no_truncation()
        tok.enable_truncation(max_length=self.max_length, strategy=tmeta.get("truncation", "longest_first"))
        tok.enable_padding(pad_id=pad_id, pad_token=pad_token, pad_type_id=int(tmeta.get("pad_type_id", 0)))
        return tok

    def _validate_signature(self) -> None:
        """Compare the graph's inputs/outputs with ``export.json``."""
        where = f"{self.model_path.name} vs {SIDECAR}"
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name: o for o in self.session.get_outputs()}
        want_in = self.meta["onnx"].get("inputs") or [{"name": n, "dtype": "int64"} for n in INPUT_NAMES]
        for spec in want_in:
            name = spec["name"]
            if name not in inputs:
                raise ExportFormatError(f"{where}: graph has no input {name!r} (inputs: {sorted(inputs)})")
            got = _ORT_DTYPES.get(inputs[name].type, inputs[name].type)
            if got != spec.get("dtype", got):
                raise ExportFormatError(f"{where}: input {name!r} is {got}, sidecar says {spec['dtype']}")
        if set(inputs) != {s["name"] for s in want_in}:
            raise ExportFormatError(
                f"{where}: graph inputs {sorted(inputs)} differ from {[s['name'] for s in want_in]}"
            )
        self.input_dtypes = {n: np.dtype(_ORT_DTYPES.get(i.type, "int64")) for n, i in inputs.items()}
        if OUTPUT_NAME not in outputs or len(outputs) != 1:
            raise ExportFormatError(
                f"{where}: expected one output {OUTPUT_NAME!r}, graph has {sorted(outputs)}"
            )
        shape = outputs[OUTPUT_NAME].shape
        if len(shape) != 3:
            raise ExportFormatError(
                f"{where}: output {OUTPUT_NAME!r} has rank {len(shape)}, expected 3 (B×T×d)"
            )
        for axis, want, label in ((1, self.num_tokens, "num_tokens"), (2, self.d, "d")):
            if isinstance(shape[axis], int) and shape[axis] != want:
                raise ExportFormatError(
                    f"{where}: output axis {axis} is {shape[axis]} but the sidecar's {label} is {want}; "
                    "the ONNX file and export.json come from different exports"
                )
        if isinstance(shape[0], int):
            raise ExportFormatError(
                f"{where}: batch axis of {OUTPUT_NAME!r} is fixed at {shape[0]}; expected dynamic"
            )

    # ------------------------------------------------------------------ inference
    def encode(self, texts: Sequence[TextInput]) -> dict[str, np.ndarray]:
        """Tokenise texts (or ``(a, b)`` pairs) exactly like the PyTorch path.

        Returns
        -------
        dict
            ``input_ids`` and ``attention_mask``, each ``B×L`` (int64), right-padded to the longest.
        """
        self._check_texts(texts)
        if self.tokenizer is None:  # PT: the graph reads only the batch size
            ones = np.ones((len(texts), 1), dtype=np.int64)
            return {"input_ids": ones, "attention_mask": ones.copy()}
        encs = self.tokenizer.encode_batch(_to_pairs(texts))
        ids = np.asarray([e.ids for e in encs], dtype=np.int64)
        mask = np.asarray([e.attention_mask for e in encs], dtype=np.int64)
        return {"input_ids": ids, "attention_mask": mask}

    @staticmethod
    def _check_texts(texts: Sequence[TextInput]) -> None:
        if isinstance(texts, (str, bytes)):
            raise TypeError("prompts() takes a list of texts, not a single string; wrap it: [text]")
        if len(texts) == 0:
            raise ValueError("prompts() got an empty text list; pass at least one text")

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Run the graph on already tokenised inputs.

        Parameters
        ----------
        input_ids, attention_mask : np.ndarray
            ``B×L`` integer arrays.

        Returns
        -------
        np.ndarray
            ``Z``: ``B×T×d`` float32.
        """
        feeds = {
            "input_ids": np.ascontiguousarray(input_ids, dtype=self.input_dtypes["input_ids"]),
            "attention_mask": np.ascontiguousarray(attention_mask, dtype=self.input_dtypes["attention_mask"]),
        }
        if feeds["input_ids"].ndim != 2 or feeds["input_ids"].shape != feeds["attention_mask"].shape:
            raise ValueError(
                f"input_ids {feeds['input_ids'].shape} and attention_mask {feeds['attention_mask'].shape} must be equal B×L"
            )
        return self.session.run([OUTPUT_NAME], feeds)[0]

    def prompts(self, texts: Sequence[TextInput], batch_size: int | None = None) -> np.ndarray:
        """Soft prompts for ``texts``.

        Parameters
        ----------
        texts : sequence of str or (str, str | None)
            Inputs as the instance encoder sees them (``(text_a, text_b)`` for pair tasks).
        batch_size : int, optional
            Split into chunks of this size (``None``: one batch).

        Returns
        -------
        np.ndarray
            ``Z``: ``B×T×d`` float32, ``T`` = ``num_tokens`` (m, or 2m for ``lopa-concat``).
        """
        self._check_texts(texts)
        texts = list(texts)
        step = len(texts) if not batch_size else int(batch_size)
        out = [self.run(**self.encode(texts[s : s + step])) for s in range(0, len(texts), step)]
        return out[0] if len(out) == 1 else np.concatenate(out, 0)

    def __repr__(self) -> str:
        return (
            f"PromptRuntime({str(self.directory)!r}, method={self.method!r}, T={self.num_tokens}, d={self.d}, "
            f"int8={self.int8}, threads={self.threads})"
        )
