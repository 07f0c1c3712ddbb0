"""Where task data live and how GLUE files are parsed.

The data directory is resolved by :func:`resolve_data_dir`: an explicit
argument, then the ``LOPA_FED_DATA_DIR`` environment variable, then
``<repo root>/../shared/data`` and ``<cwd>/../shared/data``. When nothing local
is found and ``HF_HUB_OFFLINE`` is not ``"1"``, GLUE tasks fall back to the
Hugging Face ``glue`` dataset (``datasets`` is imported lazily, only then).

Files are parsed with :mod:`csv` using a tab delimiter, ``QUOTE_NONE`` (sentences
contain unbalanced ``"``) and ``utf-8-sig`` (MRPC has a UTF-8 BOM). Headered files
are read by column name; CoLA has no header and is read by position. Malformed
rows raise :class:`~lopa_fed.errors.DataError` naming the file, the 1-based line
number and what was expected. Parsed files are cached per process, keyed by path,
mtime and size.

This module depends only on the standard library.
"""

from __future__ import annotations

import csv
import functools
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError

__all__ = ["DATA_DIR_ENV", "Example", "resolve_data_dir", "default_candidates", "hub_offline", "parse_file", "load_hub"]

#: Environment variable naming the directory that holds ``SST-2/``, ``RTE/``, ...
DATA_DIR_ENV = "LOPA_FED_DATA_DIR"

#: Hub repository that the legacy ``glue`` dataset name redirects to.
_HUB_DATASET = "nyu-mll/glue"


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
    label_first: bool = False  # "<label> <text>" lines, split at the first space (the stsa.binary files)
    hub_dataset: str = ""  # hub repository when not GLUE's (config None)


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
    # Sentence-level SST-2 (Kim 2014 split of the treebank's whole sentences): "<label> <sentence>" lines.
    "sst2-sentences": _Format(
        False, 1, None, 0, ncols=2, col_names=("label", "sentence"), label_first=True,
        hub_dataset="SetFit/sst2", hub_a="text", hub_labels=("0", "1"),
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



# ---------------------------------------------------------------- data directory
def default_candidates() -> list[Path]:
    """Directories searched when no data directory is given (the first existing one wins)."""
    repo_root = Path(__file__).resolve().parents[2]
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
    for p in default_candidates():
        if p.is_dir():
            return p
    return None


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE=1`` forbids downloads."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip() == "1"


# ----------------------------------------------------------------------- parsing
@functools.lru_cache(maxsize=32)
def parse_file(
    path: str, mtime_ns: int, size: int, task_name: str, split: str, label_names: tuple[str, ...]
) -> tuple[Example, ...]:
    """Parse one GLUE TSV file (cached; mtime and size are part of the key).

    Returns
    -------
    tuple of Example
        With ``label`` = the index of the raw label in ``label_names`` and uids
        ``"<task_name>/<split>/<row>"``.
    """
    del mtime_ns, size  # cache key only
    fmt = _FORMATS[task_name]
    label_index = {name: i for i, name in enumerate(label_names)}
    out: list[Example] = []
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = _LabelFirst(f) if fmt.label_first else csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
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
        expect_cols = (
            "'<label> <sentence>' (a label, a space, the text)"
            if fmt.label_first
            else f"{ncols} tab-separated columns ({', '.join(col_names)})"
        )
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
                    f"{{{', '.join(label_names)}}}, got {raw!r}"
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


#: Penn Treebank bracket escapes in the stsa.binary files; GLUE's SST-2 files write the brackets themselves.
_PTB_BRACKETS = {"-lrb-": "(", "-rrb-": ")", "-lsb-": "[", "-rsb-": "]", "-lcb-": "{", "-rcb-": "}"}


class _LabelFirst:
    """Rows ``[label, text]`` of ``"<label> <text>"`` lines, with ``line_num`` like :func:`csv.reader`.

    PTB escapes (``-lrb-`` ..., ``\\/``, ``\\*``) are undone, as in GLUE's SST-2 files.
    """

    def __init__(self, f) -> None:
        self._f, self.line_num = f, 0

    def __iter__(self):
        for line in self._f:
            self.line_num += 1
            line = line.rstrip("\r\n")
            if not line.strip():
                yield []
                continue
            row = line.split(" ", 1)
            if len(row) == 2:
                text = row[1].replace("\\/", "/").replace("\\*", "*")
                row[1] = " ".join(_PTB_BRACKETS.get(w, w) for w in text.split(" "))
            yield row


@functools.lru_cache(maxsize=16)
def load_hub(task_name: str, split: str, hub_config: str, label_names: tuple[str, ...]) -> tuple[Example, ...]:
    """Load a split from the Hugging Face ``glue`` dataset (lazy import, cached)."""
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
    repo, config = (fmt.hub_dataset, None) if fmt.hub_dataset else (_HUB_DATASET, hub_config)
    try:
        ds = datasets.load_dataset(repo, config, split=hub_split)
    except Exception as exc:  # network / hub errors: give one actionable message
        raise DataError(
            f"no local data for task {task_name!r} and loading {repo}{'/' + config if config else ''} "
            f"[{hub_split}] from the hub failed ({exc}); pass --data-dir or set {DATA_DIR_ENV}"
        ) from exc
    label_index = {name: i for i, name in enumerate(label_names)}
    hub_to_ours = [label_index[n] for n in fmt.hub_labels]
    out: list[Example] = []
    for row in ds:
        hl = int(row["label"])
        if hl < 0:  # unlabelled (test) rows
            continue
        if hl >= len(hub_to_ours):
            raise DataError(
                f"hub {hub_config}[{hub_split}]: expected label in [0, {len(hub_to_ours)}), got {hl}"
            )
        a = str(row[fmt.hub_a]).strip()
        b = str(row[fmt.hub_b]).strip() if fmt.hub_b is not None else None
        out.append(Example(a, b, hub_to_ours[hl], f"{task_name}/{split}/{len(out)}"))
    return tuple(out)


