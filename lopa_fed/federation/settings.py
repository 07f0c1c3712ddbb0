"""The settings of a federated run, parsed from a Flower run config by both apps alike.

:class:`FedSettings` bundles the prompt method (:class:`~lopa_fed.config.LoPAConfig`),
local training (:class:`~lopa_fed.config.TrainConfig`) and the federation-only sections
(:mod:`lopa_fed.federation.sections`). :data:`SCHEMA` is generated from those dataclasses'
fields, so every field is a run-config key (``-`` for ``_``), with three renames and
federation defaults for short local rounds:

============================  ==========================  =================================
run-config key                field                       note
============================  ==========================  =================================
``local-epochs``              ``TrainConfig.epochs``      default 1
``local-steps``               ``TrainConfig.max_steps``   default 10; 0 = no cap
``lr``                        ``TrainConfig.lr``          default 1e-3; 0 = the task's lr
``max-length``                ``TrainConfig.max_length``  0 = the task's (256 GLUE, 512 code)
``r``                         ``LoPAConfig.r``            0 = the task's (4 GLUE, 1 code)
``seed``                      ``FedSettings.seed``        also seeds local training
============================  ==========================  =================================

The settings hold the resolved configs (``settings.lopa.r`` is the rank that runs), so
:meth:`FedSettings.to_run_config` writes explicit values and round-trips.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..config import LoPAConfig, TrainConfig
from ..errors import ConfigError, UnknownTaskError
from ..tasks import Task, get_task
from .attack import AttackConfig
from .hetero import check_tiers
from .protocol import FEDERATE_MODES, reported_metric
from .schema import RunConfigSchema, keys_of
from .sections import DataConfig, PathsConfig, ServerConfig

if TYPE_CHECKING:  # pragma: no cover
    from ..model import PromptedModel

__all__ = ["SCHEMA", "FedSettings", "new_model"]

#: The sections of :class:`FedSettings` and their dataclasses.
SECTIONS: dict[str, type] = {
    "lopa": LoPAConfig,
    "train": TrainConfig,
    "data": DataConfig,
    "server": ServerConfig,
    "paths": PathsConfig,
    "attack": AttackConfig,
}

#: Fields whose run-config 0 means the task's default (:class:`~lopa_fed.tasks.TaskDefaults`).
TASK_DEFAULTS: dict[tuple[str, str], Callable[[Task, str], Any]] = {
    ("lopa", "r"): lambda task, method: task.defaults.r,
    ("train", "max_length"): lambda task, method: task.defaults.max_length,
    ("train", "lr"): lambda task, method: task.defaults.learning_rate(method),
}


@dataclass(frozen=True)
class FedSettings:
    """The federated run configuration (``[tool.flwr.app.config]``), validated as a whole.

    Build it with :meth:`from_run_config` (or :meth:`of` in Python); both apps do, so a bad
    value fails the same way on both sides, with a message naming the key.

    Attributes
    ----------
    lopa : LoPAConfig
        Prompt method and sizes (``r`` resolved from the task when the run config says 0).
    train : TrainConfig
        Local training per round (``max_length``, ``lr`` resolved from the task when 0).
    data, server, paths
        :class:`DataConfig` (partitions), :class:`ServerConfig` (rounds, strategy, validation,
        DP), :class:`PathsConfig` (output, private state, data, audit log).
    attack : AttackConfig
        Simulated attackers, a research knob (:mod:`lopa_fed.federation.attack`; keys ``attack``,
        ``attackers``, ``attack-scale``); off by default.
    task : str
        A GLUE task (``sst2``, ``rte``, ...) or a code task (``cruxeval-o``, ``cruxeval-i``,
        ``mbpp``); see :func:`lopa_fed.tasks.get_task`.
    model, encoder : str
        Frozen model and instance encoder; ``"default"`` is the task's default model.
    federate : str
        One of :data:`~lopa_fed.federation.FEDERATE_MODES`.
    seed : int
        Seeds partitioning, local splits, initialisation and local training.
    max_new_tokens : int
        Generation budget when scoring tasks that generate (0: the task's).
    tiers : str
        Per-partition encoder tiers (:func:`lopa_fed.federation.hetero.parse_tiers`); each node's
        own settings come from :func:`lopa_fed.federation.hetero.node_tier`.
    """

    lopa: LoPAConfig
    train: TrainConfig
    data: DataConfig
    server: ServerConfig
    paths: PathsConfig
    attack: AttackConfig
    task: str = field(default="sst2", metadata={"help": "GLUE task (sst2, sst2-sentences, rte, mrpc, cola) or code task"})
    model: str = field(default="default", metadata={"help": "frozen model (default: the task's)"})
    encoder: str = field(default="default", metadata={"help": "instance encoder or tier (minilm, minilm-l<k>, static; default: MiniLM)"})
    federate: str = field(default="zs", metadata={"help": f"what is sent: {', '.join(FEDERATE_MODES)}"})
    seed: int = field(default=9876, metadata={"help": "seed of partitions, splits, init and training"})
    max_new_tokens: int = field(default=0, metadata={"help": "generation budget for scoring (0: the task's)"})
    tiers: str = field(default="", metadata={"help": (
        "per-partition encoder tiers in partition order, TIER[:r=R][:hidden=H][:n=COUNT],... e.g. "
        "minilm:r=4:n=4,minilm-l3:r=1:n=3,static:r=1:n=3 (empty: every node runs encoder/r/hidden; "
        "see lopa_fed.federation.hetero)"
    )})

    def __post_init__(self) -> None:
        if self.federate not in FEDERATE_MODES:
            raise ConfigError(f"federate: unknown {self.federate!r}; choose one of {', '.join(FEDERATE_MODES)}")
        if self.max_new_tokens < 0:
            raise ConfigError(f"max-new-tokens must be >= 0, got {self.max_new_tokens!r}")
        if self.server.secagg and self.federate != "zs":
            raise ConfigError(f"secagg = true works only with federate = zs, got federate = {self.federate!r}")
        task = _task(self.task)
        task.check(self.lopa.method, self.kind)
        check_tiers(self)
        if task.num_labels == 0 and self.data.partitioner != "iid":
            raise ConfigError(
                f"partitioner: {self.data.partitioner!r} partitions by label, and task {self.task!r} has no "
                "labels; use partitioner iid"
            )

    # ------------------------------------------------------------------ parsing
    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> FedSettings:
        """Parse a Flower run config (hyphenated keys); keys it lacks take their defaults.

        Raises
        ------
        ConfigError
            An unknown key (the message names the closest known one), a value of the wrong
            type or out of range (the message names the key).
        """
        values = {**SCHEMA.defaults(), **SCHEMA.parse(run_config)}
        top = {k.field: values[k.name] for k in SCHEMA.section("")}
        task = _task(top["task"])
        kwargs: dict[str, dict[str, Any]] = {
            name: {k.field: k.to_field(values[k.name]) for k in SCHEMA.section(name)} for name in SECTIONS
        }
        kwargs["train"]["seed"] = top["seed"]
        for (name, fld), default in TASK_DEFAULTS.items():
            if kwargs[name][fld] in (0, None):
                kwargs[name][fld] = default(task, kwargs["lopa"]["method"])
        sections = {name: _build(SECTIONS[name], name, kw) for name, kw in kwargs.items()}
        return cls(**sections, **top)

    @classmethod
    def of(cls, **values: Any) -> FedSettings:
        """:meth:`from_run_config` with Python names: ``FedSettings.of(local_steps=2)``."""
        return cls.from_run_config({k.replace("_", "-"): v for k, v in values.items()})

    def to_run_config(self) -> dict[str, Any]:
        """Every run-config key with this run's (resolved) value; :meth:`from_run_config` inverts it."""
        out = {}
        for key in SCHEMA:
            owner = getattr(self, key.section) if key.section else self
            out[key.name] = key.from_field(getattr(owner, key.field))
        return out

    # ---------------------------------------------------------------- derived
    @property
    def task_spec(self) -> Task:
        """The task object (:func:`lopa_fed.tasks.get_task`)."""
        return get_task(self.task)

    @property
    def model_name(self) -> str:
        """The frozen model to load: ``model``, with ``default`` meaning the task's default model."""
        return self.task_spec.defaults.model_name(self.model)

    @property
    def kind(self) -> str:
        """Frozen-model kind: the task's default (``causal`` for code tasks, else ``auto``)."""
        return self.task_spec.defaults.kind

    @property
    def metric(self) -> str:
        """What evaluate replies report as ``accuracy`` (:func:`~lopa_fed.federation.reported_metric`)."""
        return reported_metric(self.task_spec)

    def train_config(self, seed: int | None = None) -> TrainConfig:
        """Local training settings (``seed`` overrides the run seed, e.g. per round and partition)."""
        return self.train if seed is None else dataclasses.replace(self.train, seed=int(seed))

    def fingerprint(self) -> str:
        """What a private state file must match to be restored (task, method, sizes, models)."""
        lp = self.lopa
        return "|".join(
            str(x) for x in (self.task, lp.method, lp.m, lp.r, lp.hidden, self.model, self.encoder, self.federate)
        )


def new_model(settings: FedSettings) -> PromptedModel:
    """A fresh model for ``settings``; the frozen model and encoder come from the per-process cache."""
    from ..model import build_model

    return build_model(
        settings.task_spec, settings.lopa, settings.model_name, settings.encoder, kind=settings.kind,
        seed=settings.seed,
    )


def _task(name: str) -> Task:
    try:
        return get_task(name)
    except UnknownTaskError as exc:
        raise ConfigError(f"task: {exc}") from None


def _build(cls: type, section: str, kwargs: dict[str, Any]) -> Any:
    """``cls(**kwargs)``, with field names in a ConfigError turned into run-config keys."""
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        message = str(exc)
        for key in sorted(SCHEMA.section(section), key=lambda k: -len(k.field)):
            message = re.sub(rf"\b{key.field}\b", key.name, message)
        raise ConfigError(message) from None


#: Every run-config key: ``FedSettings``' own fields, then each section's.
SCHEMA = RunConfigSchema(
    [
        *keys_of(FedSettings, "", skip=SECTIONS),
        *keys_of(LoPAConfig, "lopa", defaults={"r": 0}, zero_means={"r": "the task's rank"}),
        *keys_of(
            TrainConfig,
            "train",
            rename={"epochs": "local-epochs", "max_steps": "local-steps"},
            defaults={"epochs": 1, "max_steps": 10, "lr": 1e-3, "max_length": 0},
            zero_means={"max_steps": "no cap", "lr": "the task's lr", "max_length": "the task's token limit"},
            skip=("seed",),
        ),
        *(key for name in ("data", "server", "paths") for key in keys_of(SECTIONS[name], name)),
        *keys_of(AttackConfig, "attack", rename={"kind": "attack", "scale": "attack-scale"}),
    ]
)
