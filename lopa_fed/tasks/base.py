"""The one interface every task implements, and the defaults it chooses.

GLUE classification (:class:`~lopa_fed.tasks.glue.GlueTask`) and code generation
(:class:`~lopa_fed.tasks.code.CodeTask`) look the same to every caller: read a
split, encode it for a frozen model, evaluate a model on it, and say which
settings to use when the user leaves them unset. No caller branches on the
task's family; it asks the task.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from ..errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from ..backbone import FrozenModel
    from ..data import EncodedDataset

__all__ = ["SPLITS", "Task", "TaskDefaults"]

#: Split names every task reads: ``train`` (to fit on) and ``dev`` (to report on; the
#: GLUE dev set, or the test half of a code task's seeded 50/50 split).
SPLITS = ("train", "dev")


@dataclass(frozen=True)
class TaskDefaults:
    """Settings a task uses for every option the user leaves unset. Each is written once, here.

    Attributes
    ----------
    model : str
        Frozen model meant by ``"default"`` (MiniLM for GLUE, SmolLM2 for code).
    kind : str
        Frozen-model kind: ``"auto"`` (from the model's config) or ``"causal"``.
    r : int
        LoPA rank (paper: 4 on GLUE, 1 on code).
    hidden : int or None
        Instance-head width h′; ``None`` means the instance encoder's width h.
    epochs : int
        Training epochs (paper: 20 on GLUE, 5 on code).
    max_length : int
        Token limit per example, centralized and federated alike.
    val_fraction : float
        Share of train held out for model selection (0: none).
    max_new_tokens : int
        Generation budget for scoring (0: the task does not generate).
    lr : mapping of str to float
        Learning rate per method family (``lopa``, ``pt``, ``idpg``, ``lora``, ``head``): measured on
        this machine's budgets (see README, Results), so that a first run learns.
    metric : str
        Name of the headline metric (``accuracy``, ``f1``, ``mcc``, ``pass@1``).
    paper_lr : mapping of str to float
        The paper's learning rates (``--paper-defaults``), tuned for RoBERTa-large over 20 epochs.
    zs_init : mapping of str to str
        Zs initialisation by frozen-model kind (``classifier``, ``mlm``, ``causal``); kinds not
        listed use the paper's ``normal``.
    """

    model: str = "default"
    kind: str = "auto"
    r: int = 4
    hidden: int | None = 256
    epochs: int = 20
    max_length: int = 256
    val_fraction: float = 0.1
    max_new_tokens: int = 0
    lr: Mapping[str, float] = field(default_factory=dict)
    metric: str = "accuracy"
    paper_lr: Mapping[str, float] = field(default_factory=dict)
    zs_init: Mapping[str, str] = field(default_factory=dict)

    def learning_rate(self, method: str, paper: bool = False) -> float:
        """The default lr for ``method`` (``lopa-*`` ablations count as ``lopa``); ``paper``: the paper's."""
        base = "lopa" if method.startswith("lopa") else method
        table = self.paper_lr if paper and self.paper_lr else self.lr
        return float(table.get(base, 1e-4))

    def zs_init_for(self, kind: str) -> str:
        """How Zs starts on a frozen model of ``kind``: ``vocab`` or ``normal``."""
        return self.zs_init.get(kind, "normal")

    def model_name(self, name: str | None) -> str:
        """``name``, with ``None`` or ``"default"`` meaning this task's default frozen model."""
        return self.model if name in (None, "", "default") else str(name)


@runtime_checkable
class Task(Protocol):
    """What every task provides (GLUE and code tasks alike).

    Attributes
    ----------
    name : str
        Registry key, e.g. ``"sst2"`` or ``"cruxeval-o"``.
    defaults : TaskDefaults
        Settings for options the user leaves unset.
    num_labels : int
        Number of classes; 0 for tasks without class labels (code), which can neither be
        partitioned by label nor trained with a classification head.
    label_words : tuple of str
        Verbalizer words (empty without class labels).
    """

    name: str
    defaults: TaskDefaults
    num_labels: int
    label_words: tuple[str, ...]

    def read(
        self, split: str, data_dir: Any = None, limit: int | None = None, seed: int = 9876
    ) -> list[Any]:
        """Examples of ``split`` (one of :data:`SPLITS`), the first ``limit`` of them."""
        ...

    def encode(self, examples: Sequence[Any], frozen: FrozenModel, max_length: int) -> EncodedDataset:
        """Token ids for ``frozen``; the dataset keeps ``examples`` for scoring."""
        ...

    def evaluate(self, model: Any, data: EncodedDataset, **options: Any) -> dict[str, Any]:
        """Score ``model`` on ``data``: ``score`` (the headline metric), ``loss`` and the task's metrics."""
        ...

    def label_of(self, example: Any) -> int | None:
        """Class label of ``example`` (``None`` without class labels)."""
        ...

    def check(self, method: str, kind: str) -> None:
        """Raise :class:`~lopa_fed.errors.ConfigError` if ``method`` or frozen ``kind`` cannot run here."""
        ...


def check_split(split: str) -> str:
    """``split`` if it is one of :data:`SPLITS` (``test`` is accepted for ``dev``), else ConfigError."""
    if split == "test":
        return "dev"
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    return split
