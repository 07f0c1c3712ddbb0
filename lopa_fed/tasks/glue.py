"""GLUE classification tasks: verbalizers, templates, metrics and defaults.

Each GLUE task used by LoPA is a frozen :class:`GlueTask`: where its files live
(read by :mod:`lopa_fed.tasks.files`), how raw labels map to verbalizer words (see
``LOPA.md``, section "Losses"), the cloze template for masked LMs, the causal-LM
prompt prefix, the evaluation metric (accuracy, F1 or Matthews correlation) and
the defaults of :class:`~lopa_fed.tasks.base.TaskDefaults`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from ..config import PAPER_LR
from ..data import EncodedDataset, encode_examples
from ..errors import ConfigError, DataError
from . import files
from .base import TaskDefaults, check_split
from .files import DATA_DIR_ENV, Example

if TYPE_CHECKING:  # pragma: no cover
    from ..backbone import FrozenModel

__all__ = ["GLUE_DEFAULTS", "GLUE_TASKS", "GlueTask"]

#: Learning rates selected by ``bench/quality.py`` on SST-2 (MiniLM classifier, 125–250 steps, lr grid
#: on a held-out train slice): the paper's 1e-5 for LoPA does not move a frozen-encoder run in that budget.
#: The causal setting (frozen SmolLM2, vocabulary-row Zs, 125 steps) agrees within noise: PT 3e-2, 1e-2 and
#: 3e-3 score 84.0, 83.8 and 83.5 on the held-out slice (dev over 3 seeds: 83.6 ± 1.5 at 3e-2, 83.4 ± 2.0 at
#: 1e-2), LoPA 3e-3 (1e-3 ties, 1e-2 is 8 points lower), LoRA 1e-3 (``bench/results/quality-causal.json``).
#: Only IDPG differs: there it selects 1e-2 (78.0 against 72.0 at 3e-3); one lr serves every kind of model,
#: and IDPG keeps the classifier setting's 3e-3.
MEASURED_LR = {"lopa": 3e-3, "pt": 1e-2, "idpg": 3e-3, "lora": 1e-3, "head": 1e-2}

#: GLUE settings: the paper's sizes (LOPA.md, "Training settings"), max length 256 centralized and federated,
#: measured learning rates (the paper's with ``--paper-defaults``), and Zs from vocabulary rows on a causal
#: LM, which has no embedding LayerNorm to absorb N(0, 1) (see :class:`~lopa_fed.config.LoPAConfig`).
GLUE_DEFAULTS = TaskDefaults(
    model="default", kind="auto", r=4, hidden=256, epochs=20, max_length=256, val_fraction=0.1,
    max_new_tokens=0, lr=MEASURED_LR, metric="accuracy", paper_lr=dict(PAPER_LR), zs_init={"causal": "vocab"},
)

#: Causal-LM prompt used for pair tasks whose template puts ``{b}`` after ``{mask}``.
_CAUSAL_PAIR_PREFIX = "{a} ? {b} Answer:"


@dataclass(frozen=True)
class GlueTask:
    """A GLUE classification task: files, verbalizer, template, metric and defaults.

    Attributes
    ----------
    name : str
        Registry key: ``"sst2"``, ``"sst2-sentences"``, ``"rte"``, ``"mrpc"``, ``"cola"``, ``"qnli"``, ``"mnli"``,
        ``"qqp"``.
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
    file_pattern : str
        File name under :attr:`glue_dir`, with ``{split}`` the file stem (``"train"`` or :attr:`dev_split`).
    """

    name: str
    glue_dir: str
    label_names: tuple[str, ...]
    label_words: tuple[str, ...]
    template: str
    metric: str
    dev_split: str = "dev"
    hub_config: str = ""
    file_pattern: str = "{split}.tsv"

    @property
    def defaults(self) -> TaskDefaults:
        """The paper's GLUE settings, with this task's headline metric."""
        return replace(GLUE_DEFAULTS, metric=self.metric)

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
        split = check_split(split)
        return self.file_pattern.format(split=self.dev_split if split == "dev" else "train")

    def read(
        self,
        split: str,
        data_dir: str | os.PathLike[str] | None = None,
        limit: int | None = None,
        seed: int = 9876,
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
        seed : int
            Unused (GLUE splits are fixed files); part of the :class:`Task` interface.

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
        del seed
        split = check_split(split)
        if limit is not None and limit < 0:
            raise ConfigError(f"limit must be >= 0 or None, got {limit}")
        explicit = data_dir is not None or bool(os.environ.get(DATA_DIR_ENV))
        root = files.resolve_data_dir(data_dir)
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
            rows = files.parse_file(str(path.resolve()), st.st_mtime_ns, st.st_size, self.name, split, self.label_names)
        else:
            if files.hub_offline():
                looked = list(dict.fromkeys(str(p / self.glue_dir / fname) for p in files.default_candidates()))
                raise DataError(
                    f"no local data for task {self.name!r}: looked for {' and '.join(looked)}, "
                    f"and HF_HUB_OFFLINE=1 forbids downloading. Pass --data-dir or set "
                    f"{DATA_DIR_ENV} to a directory containing {self.glue_dir}/{fname}"
                )
            rows = files.load_hub(self.name, split, self.hub_config, self.label_names)
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


    # --------------------------------------------------------------- interface
    def encode(self, examples: Sequence[Example], frozen: FrozenModel, max_length: int) -> EncodedDataset:
        """Token ids for ``frozen``'s kind (pair encoding, cloze or causal prefix); see :func:`encode_examples`."""
        return encode_examples(examples, self, frozen, max_length)

    def evaluate(self, model, data: EncodedDataset, *, batch_size: int = 64, **options: Any) -> dict[str, Any]:
        """``loss``, ``accuracy`` (plus ``f1``/``mcc``) and ``score`` of ``model`` on ``data``.

        Generation options (``max_new_tokens``, ``progress``) are accepted and ignored.
        """
        from ..train import classification_metrics

        return classification_metrics(model, data, batch_size)

    def label_of(self, example: Example) -> int:
        """The example's label index."""
        return example.label

    def check(self, method: str, kind: str) -> None:
        """Every method and frozen-model kind can run a GLUE task."""

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
_SST2 = GlueTask("sst2", "SST-2", ("0", "1"), ("terrible", "great"), "{a} . It was {mask} .", "accuracy",
                 hub_config="sst2")
GLUE_TASKS: dict[str, GlueTask] = {
    t.name: t
    for t in (
        _SST2,
        # SST-2's whole sentences only (stsa.binary.*, 6,920 train rows): GLUE's SST-2 train is mostly phrases
        # of those sentences (67k rows, 9 words on average), while its dev (the same 872 rows) is whole sentences.
        replace(_SST2, name="sst2-sentences", file_pattern="stsa.binary.{split}"),
        GlueTask(
            "rte",
            "RTE",
            ("entailment", "not_entailment"),
            ("Yes", "No"),
            "{a} ? {mask} , {b}",
            "accuracy",
            hub_config="rte",
        ),
        GlueTask("mrpc", "MRPC", ("0", "1"), ("No", "Yes"), "{a} ? {mask} , {b}", "f1", hub_config="mrpc"),
        # CoLA is not in the paper: LM-BFF-style template (Gao et al. 2021) with
        # words that are single BPE tokens in RoBERTa/GPT-2 vocabularies.
        GlueTask(
            "cola", "CoLA", ("0", "1"), ("wrong", "correct"), "{a} This is {mask} .", "mcc", hub_config="cola"
        ),
        GlueTask(
            "qnli",
            "QNLI",
            ("entailment", "not_entailment"),
            ("Yes", "No"),
            "{a} ? {mask} , {b}",
            "accuracy",
            hub_config="qnli",
        ),
        GlueTask(
            "mnli",
            "MNLI",
            ("contradiction", "entailment", "neutral"),
            ("No", "Yes", "Maybe"),
            "{a} ? {mask} , {b}",
            "accuracy",
            dev_split="dev_matched",
            hub_config="mnli",
        ),
        GlueTask("qqp", "QQP", ("0", "1"), ("No", "Yes"), "{a} ? {mask} , {b}", "f1", hub_config="qqp"),
    )
}



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

