"""Tokenisation, collation and splits for the frozen model.

:func:`encode_examples` turns task examples into token ids for the frozen model's
kind (plain pair encoding for ``classifier``, the cloze template for ``mlm``, the
template prefix for ``causal``). Each item also keeps the text the instance
encoder sees, so features come from the content-keyed cache at batch time.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .backbone import FrozenModel
from .errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from .tasks import Task
    from .tasks.files import Example


@dataclass(frozen=True)
class Item:
    """One encoded example: frozen-model ``input_ids``, ``label``, ``<mask>`` index and encoder text."""

    input_ids: tuple[int, ...]
    label: int
    enc_text: tuple[str, str | None]
    read_pos: int = -1
    uid: str = ""
    lm_labels: tuple[int, ...] | None = None  # answer-token LM: -100 on prompt tokens


class EncodedDataset(Dataset):
    """A list of :class:`Item` with the pad id needed to collate them.

    ``examples[i]`` is the raw example of ``items[i]`` when the task keeps them (code tasks
    score generations against them); ``task`` is the task that encoded the items.
    """

    def __init__(
        self, items: Sequence[Item], pad_id: int, task: Task | None = None, examples: Sequence[Any] | None = None
    ) -> None:
        self.items = list(items)
        self.pad_id = int(pad_id)
        self.task = task
        self.examples = list(examples) if examples is not None else None
        if self.examples is not None and len(self.examples) != len(self.items):
            raise ValueError(f"{len(self.examples)} examples for {len(self.items)} items")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Item:
        return self.items[i]

    def subset(self, indices: Sequence[int]) -> EncodedDataset:
        """A dataset with the items at ``indices``."""
        exs = [self.examples[i] for i in indices] if self.examples is not None else None
        return EncodedDataset([self.items[i] for i in indices], self.pad_id, self.task, exs)

    @property
    def labels(self) -> list[int]:
        return [it.label for it in self.items]

    def collate(self, items: Sequence[Item]) -> dict:
        """Right-padded batch: ``input_ids``/``attention_mask`` B×L, ``labels`` B, ``read_pos`` B, ``enc_texts``.

        Items with ``lm_labels`` (answer-token LM) give ``lm_labels`` B×L (padded with -100) instead of ``labels``.
        """
        return collate(items, self.pad_id)


def collate(items: Sequence[Item], pad_id: int) -> dict:
    """Collate :class:`Item` s into tensors (see :meth:`EncodedDataset.collate`)."""
    L = max(len(it.input_ids) for it in items)
    ids = torch.full((len(items), L), pad_id, dtype=torch.long)
    mask = torch.zeros((len(items), L), dtype=torch.long)
    for i, it in enumerate(items):
        ids[i, : len(it.input_ids)] = torch.tensor(it.input_ids, dtype=torch.long)
        mask[i, : len(it.input_ids)] = 1
    batch = {
        "input_ids": ids,
        "attention_mask": mask,
        "labels": torch.tensor([it.label for it in items], dtype=torch.long),
        "read_pos": torch.tensor([it.read_pos for it in items], dtype=torch.long),
        "enc_texts": [it.enc_text for it in items],
    }
    if items[0].lm_labels is not None:
        lm = torch.full((len(items), L), -100, dtype=torch.long)
        for i, it in enumerate(items):
            lm[i, : len(it.lm_labels)] = torch.tensor(it.lm_labels, dtype=torch.long)
        batch["lm_labels"] = lm
        del batch["labels"]
    return batch


def _fit_cloze(task: Task, ex: Example, tok, max_length: int) -> tuple[list[int], int]:
    """Cloze ids with the mask kept: shorten the longer sentence until the text fits."""
    a, b = ex.text_a, ex.text_b
    for _ in range(64):
        cur = replace(ex, text_a=a, text_b=b)
        ids = tok(task.cloze(cur, tok.mask_token), add_special_tokens=True)["input_ids"]
        if len(ids) <= max_length:
            return ids, ids.index(tok.mask_token_id)
        over = len(ids) - max_length
        if b is not None and len(b) > len(a):
            b = b[: max(1, len(b) - 4 * over - 4)]
        else:
            a = a[: max(1, len(a) - 4 * over - 4)]
    raise ValueError(f"{ex.uid}: cannot fit the cloze template in {max_length} tokens")


def encode_examples(
    examples: Sequence[Example], task: Task, frozen: FrozenModel, max_length: int = 256
) -> EncodedDataset:
    """Tokenise ``examples`` for ``frozen``'s kind.

    * ``classifier``: ``tokenizer(a, b)`` with longest-first truncation;
    * ``mlm``: ``task.cloze`` with the tokenizer's mask token; ``read_pos`` is its index;
    * ``causal``: ``task.prompt_prefix`` (the label word is the next token); left-truncated.
    """
    tok = frozen.tokenizer
    items = []
    for ex in examples:
        read_pos = -1
        if frozen.kind == "classifier":
            enc = tok(ex.text_a, ex.text_b, truncation=True, max_length=max_length)
            ids = enc["input_ids"]
        elif frozen.kind == "mlm":
            if tok.mask_token is None:
                raise ValueError(f"tokenizer of {frozen.identity} has no mask token; use kind classifier or causal")
            ids, read_pos = _fit_cloze(task, ex, tok, max_length)
        else:
            ids = tok(task.prompt_prefix(ex), add_special_tokens=True)["input_ids"]
            if tok.bos_token_id is not None and (not ids or ids[0] != tok.bos_token_id):
                ids = [tok.bos_token_id, *ids]
            ids = ids[-max_length:]
        items.append(Item(tuple(ids), ex.label, task.plain_text(ex), read_pos, ex.uid))
    return EncodedDataset(items, tok.pad_token_id, task, examples)


@dataclass
class Splits:
    """``train`` (for fitting), ``val`` (held out of train, for model selection) and ``test`` (the dev split)."""

    train: EncodedDataset
    val: EncodedDataset
    test: EncodedDataset


def load_splits(
    task: Task,
    frozen: FrozenModel,
    data_dir=None,
    max_length: int | None = None,
    val_fraction: float | None = None,
    seed: int = 9876,
    train_limit: int | None = None,
    test_limit: int | None = None,
    max_val: int | None = 1000,
) -> Splits:
    """Read, split and encode any task.

    ``max_length`` and ``val_fraction`` default to the task's (:class:`~lopa_fed.tasks.TaskDefaults`;
    ``val_fraction=0`` holds nothing out). ``train_limit`` takes a seeded random subset of train
    (after the validation slice is held out); ``test_limit`` takes the first rows of the dev split.
    """
    max_length = max_length or task.defaults.max_length
    val_fraction = task.defaults.val_fraction if val_fraction is None else val_fraction
    train_ex = task.read("train", data_dir, seed=seed)
    fit_ex, val_ex = train_val_split(train_ex, val_fraction=val_fraction, seed=seed, max_val=max_val)
    if train_limit is not None and train_limit < len(fit_ex):
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(fit_ex), generator=g)[:train_limit].sort().values.tolist()
        fit_ex = [fit_ex[i] for i in idx]
    test_ex = task.read("dev", data_dir, limit=test_limit, seed=seed)
    return Splits(*(task.encode(x, frozen, max_length) for x in (fit_ex, val_ex, test_ex)))


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
        Fraction held out, in ``[0, 1)`` (0: nothing); rounded, then capped by ``max_val``.
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
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if max_val is not None and max_val < 1:
        raise ConfigError(f"max_val must be >= 1 or None, got {max_val}")
    n = len(examples)
    if n < 2 or val_fraction == 0.0:
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
