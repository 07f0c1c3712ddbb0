"""GLUE task registry, readers, cloze templates and metrics.

Each GLUE task used by LoPA is described by a frozen :class:`Task`: where its
files live, how raw labels map to verbalizer words (see ``LOPA.md``,
section "Losses"), the cloze template for masked LMs, the causal-LM prompt
prefix, and the evaluation metric (accuracy, F1 or Matthews correlation).

Data are read from local GLUE-format TSV files, ``<data_dir>/<glue_dir>/<split>.tsv``.
The data directory is resolved by :func:`resolve_data_dir`: an explicit
argument, then the ``LOPA_FED_DATA_DIR`` environment variable, then
``<repo root>/../shared/data`` and ``<cwd>/../shared/data``. When nothing local
is found and ``HF_HUB_OFFLINE`` is not ``"1"``, :meth:`Task.read` falls back to the
Hugging Face ``glue`` dataset (``datasets`` is imported lazily, only then).

Files are parsed with :mod:`csv` using a tab delimiter, ``QUOTE_NONE`` (sentences
contain unbalanced ``"``) and ``utf-8-sig`` (MRPC has a UTF-8 BOM). Headered files
are read by column name; CoLA has no header and is read by position. Malformed
rows raise :class:`DataError` naming the file, the 1-based line number and what
was expected. Parsed files are cached per process, keyed by path, mtime and size.

This module depends only on the standard library and numpy.
"""

from __future__ import annotations

import csv
import functools
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "DataError",
    "UnknownTaskError",
    "Example",
    "Task",
    "TASKS",
    "get_task",
    "resolve_data_dir",
    "train_val_split",
    "label_counts",
]

#: Environment variable naming the directory that holds ``SST-2/``, ``RTE/``, ...
DATA_DIR_ENV = "LOPA_FED_DATA_DIR"

#: Hub repository that the legacy ``glue`` dataset name redirects to.
_HUB_DATASET = "nyu-mll/glue"

_SPLITS = ("train", "dev")


class DataError(ValueError):
    """A data file or directory is missing or malformed.

    The message names the file (or directory), the 1-based line number when a
    row is at fault, and what was expected.
    """


class UnknownTaskError(KeyError):
    """The task name is not in :data:`TASKS`; the message lists the known names."""

    def __str__(self) -> str:  # KeyError would repr-quote the message
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class Example:
    """One labelled GLUE example.

    Attributes
    ----------
    text_a : str
        First (or only) sentence, whitespace-stripped.
    text_b : str or None
        Second sentence for pair tasks, else ``None``.
    label : int
        Index into :attr:`Task.label_words` / :attr:`Task.label_names`.
    uid : str
        Stable id ``"<task>/<split>/<row index>"`` (0-based over data rows),
        e.g. ``"sst2/train/17"``.
    """

    text_a: str
    text_b: str | None
    label: int
    uid: str = ""


@dataclass(frozen=True)
class _Format:
    """How one task's TSV files are laid out (private)."""

    has_header: bool
    a_col: str | int  # column name (headered files) or 0-based position (CoLA)
    b_col: str | int | None
    label_col: str | int
    ncols: int = 0  # for headerless files only; headered files use len(header)
    col_names: tuple[str, ...] = ()  # for headerless files: names used in messages
    hub_a: str = "sentence"
    hub_b: str | None = None
    hub_labels: tuple[str, ...] = ()  # raw label name for each HF integer label


_FORMATS: dict[str, _Format] = {
    "sst2": _Format(True, "sentence", None, "label", hub_a="sentence", hub_labels=("0", "1")),
    "rte": _Format(
        True,
        "sentence1",
        "sentence2",
        "label",
        hub_a="sentence1",
        hub_b="sentence2",
        hub_labels=("entailment", "not_entailment"),
    ),
    "mrpc": _Format(
        True, "#1 String", "#2 String", "Quality", hub_a="sentence1", hub_b="sentence2", hub_labels=("0", "1")
    ),
    "cola": _Format(
        False,
        3,
        None,
        1,
        ncols=4,
        col_names=("source", "label", "original_label", "sentence"),
        hub_a="sentence",
        hub_labels=("0", "1"),
    ),
    "qnli": _Format(
        True,
        "question",
        "sentence",
        "label",
        hub_a="question",
        hub_b="sentence",
        hub_labels=("entailment", "not_entailment"),
    ),
    "mnli": _Format(
        True,
        "sentence1",
        "sentence2",
        "gold_label",
        hub_a="premise",
        hub_b="hypothesis",
        hub_labels=("entailment", "neutral", "contradiction"),
    ),
    "qqp": _Format(
        True,
        "question1",
        "question2",
        "is_duplicate",
        hub_a="question1",
        hub_b="question2",
        hub_labels=("0", "1"),
    ),
}

#: Causal-LM prompt used for pair tasks whose template puts ``{b}`` after ``{mask}``.
_CAUSAL_PAIR_PREFIX = "{a} ? {b} Answer:"


@dataclass(frozen=True)
class Task:
    """A GLUE classification task: files, verbalizer, template and metric.

    Attributes
    ----------
    name : str
        Registry key: ``"sst2"``, ``"rte"``, ``"mrpc"``, ``"cola"``, ``"qnli"``, ``"mnli"``, ``"qqp"``.
    glue_dir : str
        Directory name under the data dir, e.g. ``"SST-2"``.
    label_names : tuple of str
        Raw label strings as they appear in the files; the position is the label index.
    label_words : tuple of str
        Verbalizer words, in the same order as ``label_names`` (no leading space;
        tokenizers that need one should add it).
    template : str
        Cloze template with ``{a}``, ``{b}`` and ``{mask}`` placeholders.
    metric : str
        ``"accuracy"``, ``"f1"`` or ``"mcc"``.
    dev_split : str
        File stem read for the ``"dev"`` split (``"dev_matched"`` for MNLI).
    hub_config : str
        Config name of the Hugging Face ``glue`` dataset.
    """

    name: str
    glue_dir: str
    label_names: tuple[str, ...]
    label_words: tuple[str, ...]
    template: str
    metric: str
    dev_split: str = "dev"
    hub_config: str = ""

    @property
    def num_labels(self) -> int:
        """Number of classes."""
        return len(self.label_names)

    @property
    def is_pair(self) -> bool:
        """Whether examples have a second sentence (``text_b``)."""
        return "{b}" in self.template

    # ------------------------------------------------------------------ reading
    def _file_name(self, split: str) -> str:
        """Return the TSV file name for ``split`` (``"train"`` or ``"dev"``).

        Parameters
        ----------
        split : str
            ``"train"`` or ``"dev"``; ``"dev"`` maps to :attr:`dev_split`.

        Returns
        -------
        str
            E.g. ``"dev_matched.tsv"`` for MNLI dev.
        """
        _check_split(split)
        return f"{self.dev_split if split == 'dev' else 'train'}.tsv"

    def read(
        self,
        split: str,
        data_dir: str | os.PathLike[str] | None = None,
        limit: int | None = None,
    ) -> list[Example]:
        """Read a split as a list of :class:`Example`.

        Parameters
        ----------
        split : str
            ``"train"`` or ``"dev"``.
        data_dir : str or PathLike, optional
            Directory holding ``<glue_dir>/<file>.tsv``. When omitted it is found by
            :func:`resolve_data_dir`.
        limit : int, optional
            Return only the first ``limit`` examples (file order).

        Returns
        -------
        list of Example
            A fresh list; the parsed file is cached per process.

        Raises
        ------
        DataError
            An explicit or ``LOPA_FED_DATA_DIR`` directory does not exist; the task
            file is missing; a row is malformed; or no local data were found while
            ``HF_HUB_OFFLINE=1``.

        Notes
        -----
        Hub fallback (``datasets.load_dataset("glue", hub_config)``, splits
        ``train`` / ``validation``) is used when no data directory resolves, and also
        when the directory was only *auto-discovered* (not given explicitly or via
        the environment) but has no ``<glue_dir>/`` sub-directory for this task
        (e.g. QNLI/MNLI/QQP beside a shared copy holding only SST-2, RTE, MRPC and
        CoLA) -- in both cases only if ``HF_HUB_OFFLINE`` is not ``"1"``.
        """
        _check_split(split)
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0 or None, got {limit}")
        explicit = data_dir is not None or bool(os.environ.get(DATA_DIR_ENV))
        root = resolve_data_dir(data_dir)
        fname = self._file_name(split)
        if root is not None and (explicit or (root / self.glue_dir).is_dir()):
            path = root / self.glue_dir / fname
            if not path.is_file():
                raise DataError(
                    f"{path}: file not found (data dir {root}); expected the GLUE file "
                    f"{self.glue_dir}/{fname} there. Pass --data-dir or set {DATA_DIR_ENV} "
                    f"to a directory containing {self.glue_dir}/{fname}"
                )
            st = path.stat()
            rows = _parse_file(str(path.resolve()), st.st_mtime_ns, st.st_size, self.name, split)
        else:
            if _hub_offline():
                looked = list(dict.fromkeys(str(p / self.glue_dir / fname) for p in _default_candidates()))
                raise DataError(
                    f"no local data for task {self.name!r}: looked for {' and '.join(looked)}, "
                    f"and HF_HUB_OFFLINE=1 forbids downloading. Pass --data-dir or set "
                    f"{DATA_DIR_ENV} to a directory containing {self.glue_dir}/{fname}"
                )
            rows = _load_hub(self.name, split)
        return list(rows if limit is None else rows[:limit])

    # --------------------------------------------------------------- templates
    def cloze(self, ex: Example, mask: str) -> str:
        """Fill the cloze template with the example and a mask token.

        Parameters
        ----------
        ex : Example
            The example.
        mask : str
            The masked LM's mask token, e.g. ``"<mask>"``.

        Returns
        -------
        str
            E.g. ``"a charming journey . . It was <mask> ."`` for SST-2.
        """
        return self.template.format(a=ex.text_a, b=ex.text_b or "", mask=mask)

    def prompt_prefix(self, ex: Example) -> str:
        """Causal-LM prompt whose next token should be the label word.

        For templates where ``{mask}`` comes after all text (SST-2
        ``"{a} . It was"``, CoLA ``"{a} This is"``) this is the template up to, not
        including, ``{mask}``, right-stripped. For pair tasks the cloze template
        ``"{a} ? {mask} , {b}"`` puts the second sentence after the mask, which a
        left-to-right model cannot see, so both sentences go first instead:
        ``"{a} ? {b} Answer:"`` (next token: `` Yes`` / `` No`` / `` Maybe``).

        Parameters
        ----------
        ex : Example
            The example.

        Returns
        -------
        str
            The prompt, without trailing whitespace.
        """
        head, _, tail = self.template.partition("{mask}")
        if "{b}" in tail:
            return _CAUSAL_PAIR_PREFIX.format(a=ex.text_a, b=ex.text_b or "").rstrip()
        return head.format(a=ex.text_a, b=ex.text_b or "").rstrip()

    def plain_text(self, ex: Example) -> tuple[str, str | None]:
        """Return ``(text_a, text_b)`` for classifier models and the instance encoder."""
        return ex.text_a, ex.text_b

    # ----------------------------------------------------------------- metrics
    def score(self, preds: Sequence[int], labels: Sequence[int]) -> dict[str, float]:
        """Score predictions against gold labels.

        Parameters
        ----------
        preds, labels : sequence of int
            Label indices, same length, each in ``[0, num_labels)``.

        Returns
        -------
        dict of str to float
            Always ``"accuracy"``; ``"f1"`` (positive class = index 1) for F1 tasks;
            ``"mcc"`` for MCC tasks. Degenerate cases give 0.0, never NaN.
        """
        p = np.asarray(preds, dtype=np.int64).reshape(-1)
        y = np.asarray(labels, dtype=np.int64).reshape(-1)
        if p.shape != y.shape:
            raise ValueError(f"preds and labels differ in length: {p.size} != {y.size}")
        k = self.num_labels
        for nm, arr in (("preds", p), ("labels", y)):
            if arr.size and (arr.min() < 0 or arr.max() >= k):
                raise ValueError(
                    f"{nm} must be label indices in [0, {k}), got range [{arr.min()}, {arr.max()}]"
                )
        out = {"accuracy": float((p == y).mean()) if y.size else 0.0}
        if self.metric == "f1":
            out["f1"] = _f1_binary(p, y)
        elif self.metric == "mcc":
            out["mcc"] = _mcc(p, y, k)
        return out

    def main_metric(self, scores: dict[str, float]) -> float:
        """Return ``scores[self.metric]``, the task's headline number."""
        return scores[self.metric]


# ---------------------------------------------------------------------- registry
TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task(
            "sst2",
            "SST-2",
            ("0", "1"),
            ("terrible", "great"),
            "{a} . It was {mask} .",
            "accuracy",
            hub_config="sst2",
        ),
        Task(
            "rte",
            "RTE",
            ("entailment", "not_entailment"),
            ("Yes", "No"),
            "{a} ? {mask} , {b}",
            "accuracy",
            hub_config="rte",
        ),
        Task("mrpc", "MRPC", ("0", "1"), ("No", "Yes"), "{a} ? {mask} , {b}", "f1", hub_config="mrpc"),
        # CoLA is not in the paper: LM-BFF-style template (Gao et al. 2021) with
        # words that are single BPE tokens in RoBERTa/GPT-2 vocabularies.
        Task(
            "cola", "CoLA", ("0", "1"), ("wrong", "correct"), "{a} This is {mask} .", "mcc", hub_config="cola"
        ),
        Task(
            "qnli",
            "QNLI",
            ("entailment", "not_entailment"),
            ("Yes", "No"),
            "{a} ? {mask} , {b}",
            "accuracy",
            hub_config="qnli",
        ),
        Task(
            "mnli",
            "MNLI",
            ("contradiction", "entailment", "neutral"),
            ("No", "Yes", "Maybe"),
            "{a} ? {mask} , {b}",
            "accuracy",
            dev_split="dev_matched",
            hub_config="mnli",
        ),
        Task("qqp", "QQP", ("0", "1"), ("No", "Yes"), "{a} ? {mask} , {b}", "f1", hub_config="qqp"),
    )
}


def _norm_name(name: str) -> str:
    return name.strip().lower().replace("-", "").replace("_", "")


def get_task(name: str) -> Task:
    """Look a task up by name, case-insensitively.

    Parameters
    ----------
    name : str
        ``"sst2"``, ``"sst-2"``, ``"SST-2"``, ``"RTE"``, ... (hyphens and underscores ignored).

    Returns
    -------
    Task

    Raises
    ------
    UnknownTaskError
        The name is not known; the message lists the known task names.
    """
    key = _norm_name(str(name))
    for t in TASKS.values():
        if key in (t.name, _norm_name(t.glue_dir)):
            return t
    raise UnknownTaskError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")


# ---------------------------------------------------------------- data directory
def _default_candidates() -> list[Path]:
    repo_root = Path(__file__).resolve().parent.parent
    return [repo_root.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"]


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """Find the directory holding the GLUE task folders.

    Parameters
    ----------
    data_dir : str or PathLike, optional
        Explicit directory; must exist.

    Returns
    -------
    Path or None
        In order: ``data_dir``; ``$LOPA_FED_DATA_DIR``; the first existing of
        ``<repo root>/../shared/data`` (repo root = parent of the ``lopa_fed``
        package) and ``<cwd>/../shared/data``. ``None`` means "use the hub".

    Raises
    ------
    DataError
        ``data_dir`` or ``$LOPA_FED_DATA_DIR`` is given but is not a directory.
    """
    if data_dir is not None:
        p = Path(data_dir).expanduser()
        if not p.is_dir():
            raise DataError(f"data directory {p} does not exist (from --data-dir / data_dir argument)")
        return p
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        p = Path(env).expanduser()
        if not p.is_dir():
            raise DataError(f"data directory {p} does not exist (from ${DATA_DIR_ENV})")
        return p
    for p in _default_candidates():
        if p.is_dir():
            return p
    return None


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip() == "1"


def _check_split(split: str) -> None:
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")


# ----------------------------------------------------------------------- parsing
@functools.lru_cache(maxsize=32)
def _parse_file(path: str, mtime_ns: int, size: int, task_name: str, split: str) -> tuple[Example, ...]:
    """Parse one TSV file (cached; mtime and size are part of the key)."""
    del mtime_ns, size  # cache key only
    task = TASKS[task_name]
    fmt = _FORMATS[task_name]
    label_index = {name: i for i, name in enumerate(task.label_names)}
    out: list[Example] = []
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        if fmt.has_header:
            header = next(reader, None)
            if header is None:
                raise DataError(f"{path} line 1: expected a header row, got an empty file")
            header = [h.strip().lstrip("\ufeff") for h in header]
            need = [c for c in (fmt.a_col, fmt.b_col, fmt.label_col) if c is not None]
            missing = [c for c in need if c not in header]
            if missing:
                raise DataError(
                    f"{path} line 1: expected a header with columns {', '.join(map(str, need))}; "
                    f"missing {', '.join(map(str, missing))} (got {', '.join(header)})"
                )
            ncols = len(header)
            col_names = tuple(header)
            ia = header.index(fmt.a_col)
            ib = header.index(fmt.b_col) if fmt.b_col is not None else None
            il = header.index(fmt.label_col)
        else:
            ncols, col_names = fmt.ncols, fmt.col_names
            ia, il = int(fmt.a_col), int(fmt.label_col)
            ib = int(fmt.b_col) if fmt.b_col is not None else None
        expect_cols = f"{ncols} tab-separated columns ({', '.join(col_names)})"
        for row in reader:
            if not row:  # blank line
                continue
            line = reader.line_num
            if len(row) != ncols:
                raise DataError(f"{path} line {line}: expected {expect_cols}, got {len(row)}")
            raw = row[il].strip()
            label = label_index.get(raw)
            if label is None:
                raise DataError(
                    f"{path} line {line}: expected {col_names[il]} in "
                    f"{{{', '.join(task.label_names)}}}, got {raw!r}"
                )
            a = row[ia].strip()
            if not a:
                raise DataError(f"{path} line {line}: expected non-empty text in column {col_names[ia]}")
            b: str | None = None
            if ib is not None:
                b = row[ib].strip()
                if not b:
                    raise DataError(f"{path} line {line}: expected non-empty text in column {col_names[ib]}")
            out.append(Example(a, b, label, f"{task_name}/{split}/{len(out)}"))
    return tuple(out)


@functools.lru_cache(maxsize=16)
def _load_hub(task_name: str, split: str) -> tuple[Example, ...]:
    """Load a split from the Hugging Face ``glue`` dataset (lazy import, cached)."""
    task = TASKS[task_name]
    fmt = _FORMATS[task_name]
    hub_split = (
        "train" if split == "train" else ("validation_matched" if task_name == "mnli" else "validation")
    )
    try:
        import datasets  # lazy: heavy, and only needed without local files
    except ImportError as exc:  # pragma: no cover - datasets is a dependency
        raise DataError(
            f"no local data for task {task_name!r} and the 'datasets' package is not installed; "
            f"pass --data-dir or set {DATA_DIR_ENV}"
        ) from exc
    try:
        ds = datasets.load_dataset(_HUB_DATASET, task.hub_config, split=hub_split)
    except Exception as exc:  # network / hub errors: give one actionable message
        raise DataError(
            f"no local data for task {task_name!r} and loading {_HUB_DATASET}/{task.hub_config} "
            f"[{hub_split}] from the hub failed ({exc}); pass --data-dir or set {DATA_DIR_ENV}"
        ) from exc
    label_index = {name: i for i, name in enumerate(task.label_names)}
    hub_to_ours = [label_index[n] for n in fmt.hub_labels]
    out: list[Example] = []
    for row in ds:
        hl = int(row["label"])
        if hl < 0:  # unlabelled (test) rows
            continue
        if hl >= len(hub_to_ours):
            raise DataError(
                f"hub {task.hub_config}[{hub_split}]: expected label in [0, {len(hub_to_ours)}), got {hl}"
            )
        a = str(row[fmt.hub_a]).strip()
        b = str(row[fmt.hub_b]).strip() if fmt.hub_b is not None else None
        out.append(Example(a, b, hub_to_ours[hl], f"{task_name}/{split}/{len(out)}"))
    return tuple(out)


# ----------------------------------------------------------------------- metrics
def _f1_binary(p: np.ndarray, y: np.ndarray) -> float:
    tp = int(np.sum((p == 1) & (y == 1)))
    fp = int(np.sum((p == 1) & (y != 1)))
    fn = int(np.sum((p != 1) & (y == 1)))
    denom = 2 * tp + fp + fn
    return 2.0 * tp / denom if denom else 0.0


def _mcc(p: np.ndarray, y: np.ndarray, k: int) -> float:
    """Matthews correlation (Gorodkin's multiclass form; the usual formula for k = 2)."""
    if y.size == 0:
        return 0.0
    cm = np.zeros((k, k), dtype=np.float64)
    np.add.at(cm, (y, p), 1.0)
    t = cm.sum(axis=1)  # true counts per class
    q = cm.sum(axis=0)  # predicted counts per class
    c = np.trace(cm)
    s = cm.sum()
    cov = c * s - float(t @ q)
    denom = np.sqrt((s * s - float(q @ q)) * (s * s - float(t @ t)))
    return float(cov / denom) if denom > 0 else 0.0


# ----------------------------------------------------------------------- helpers
def train_val_split(
    examples: list[Example],
    val_fraction: float = 0.1,
    seed: int = 9876,
    max_val: int | None = 1000,
) -> tuple[list[Example], list[Example]]:
    """Hold out a validation slice of a training set for model selection.

    Parameters
    ----------
    examples : list of Example
        The training examples.
    val_fraction : float
        Fraction held out, in ``(0, 1)``; rounded, then capped by ``max_val``.
    seed : int
        Seed of the deterministic shuffle that picks the held-out examples.
    max_val : int, optional
        Upper bound on the validation size (``None``: no bound).

    Returns
    -------
    (train, val) : tuple of lists
        Disjoint; together they are ``examples``. Both keep the input order. ``val``
        has at least one example when ``len(examples) >= 2`` and ``train`` is never
        empty when ``examples`` is not.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if max_val is not None and max_val < 1:
        raise ValueError(f"max_val must be >= 1 or None, got {max_val}")
    n = len(examples)
    if n < 2:
        return list(examples), []
    n_val = int(round(n * val_fraction))
    if max_val is not None:
        n_val = min(n_val, max_val)
    n_val = min(max(n_val, 1), n - 1)
    perm = np.random.default_rng(seed).permutation(n)
    is_val = np.zeros(n, dtype=bool)
    is_val[perm[:n_val]] = True
    train = [ex for ex, v in zip(examples, is_val) if not v]
    val = [ex for ex, v in zip(examples, is_val) if v]
    return train, val


def label_counts(examples: Iterable[Example], num_labels: int | None = None) -> list[int]:
    """Count examples per label index.

    Parameters
    ----------
    examples : iterable of Example
    num_labels : int, optional
        Minimum length of the result (pass ``task.num_labels`` so absent classes show as 0).

    Returns
    -------
    list of int
        ``counts[i]`` is the number of examples with ``label == i``.
    """
    counts: list[int] = [0] * (num_labels or 0)
    for ex in examples:
        if ex.label >= len(counts):
            counts.extend([0] * (ex.label + 1 - len(counts)))
        counts[ex.label] += 1
    return counts
