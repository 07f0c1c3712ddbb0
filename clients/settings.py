"""Run-config schema shared by the ClientApp and the ServerApp.

Every key of ``[tool.flwr.app.config]`` in ``pyproject.toml`` maps to one field of
:class:`FedSettings` (``-`` in the key becomes ``_`` in the field). Both apps parse
the run config through :meth:`FedSettings.from_run_config`, so a bad value fails the
same way on both sides, with a message naming the key.

It also defines the federation protocol: which tensors a ``federate`` mode sends
(:func:`federated_names`) and the exact metric keys of a train reply.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lopa_fed.code_tasks import CODE_TASKS, CodeTask, get_code_task, is_code_task
from lopa_fed.config import METHODS, ConfigError, LoPAConfig, TrainConfig
from lopa_fed.tasks import TASKS, Task, get_task

#: ``federate`` modes (see :func:`federated_names`).
FEDERATE_MODES = ("zs", "zs+heads", "all", "none")
#: Partitioners from flwr-datasets.
PARTITIONERS = ("iid", "dirichlet", "inner-dirichlet", "pathological")
#: Strategies from ``flwr.serverapp.strategy`` selectable by name.
STRATEGIES = ("fedavg", "fedprox", "fedadam", "fedmedian", "fedtrimmedavg", "krum")

#: Record keys used in every message.
ARRAYS_KEY = "arrays"
CONFIG_KEY = "config"
METRICS_KEY = "metrics"

#: Exact metric keys of a train reply (the server rejects replies with other keys).
TRAIN_METRIC_KEYS = frozenset(
    {
        "num-examples",
        "train-loss",
        "first-loss",
        "steps",
        "seconds",
        "partition-id",
        "model-loads",
        "private-restored",
    }
)
#: Exact metric keys of an evaluate reply.
EVAL_METRIC_KEYS = frozenset(
    {"num-examples", "accuracy", "score", "eval-loss", "partition-id", "model-loads", "private-restored"}
)


@dataclass(frozen=True)
class FedSettings:
    """The federated run configuration (``[tool.flwr.app.config]``).

    Parameters
    ----------
    task : str
        GLUE task (``sst2``, ``rte``, ``mrpc``, ``cola``) or code task (``cruxeval-o``,
        ``cruxeval-i``, ``mbpp``; iid partitions of the paper's 50/50 train and test halves,
        answer-token LM loss, pass@1 on each client's share of the test half).
    method, model, encoder, m, r, hidden, zs_init
        Prompt method, sizes and Zs initialisation (see :class:`lopa_fed.config.LoPAConfig`); ``model`` and
        ``encoder`` are names understood by :func:`lopa_fed.model.build_model`. ``model =
        "default"`` is the packaged MiniLM for GLUE and SmolLM2-135M-Instruct for code tasks.
    num_server_rounds : int
        Total number of rounds (a resumed run continues up to this number).
    local_epochs, local_steps, batch_size, lr, max_length
        Local training budget; ``local_steps=0`` means no step cap, ``lr=0`` the paper's lr,
        ``max_length=0`` the task's default (128 tokens for GLUE, 512 for code tasks).
    max_new_tokens : int
        Code tasks: generation budget for pass@1 (``0``: the task's default, 64 for
        CruxEval and 256 for MBPP).
    federate : str
        One of :data:`FEDERATE_MODES`.
    partitioner, alpha, classes_per_partition
        flwr-datasets partitioner (``iid``; ``dirichlet``: each label spread over clients by
        Dir(α), client sizes vary; ``inner-dirichlet``: equal client sizes, each client's
        label mix ~ Dir(α); ``pathological``), Dirichlet concentration, classes per
        pathological partition.
    pool_size : int
        Seeded subset of the task's train split that is partitioned (``0``: all of it).
    test_fraction, max_test_examples
        Local test split per partition and its cap (``0``: no cap).
    seed : int
        Seeds partitioning, local splits, initialisation and local training.
    fraction_train, fraction_evaluate, min_nodes, round_timeout
        Node sampling, minimum nodes (train, evaluate and available) and the per-round reply timeout (s).
    output_dir, private_dir, data_dir
        Server output directory; client private-state directory (empty: ``<output_dir>/private``);
        GLUE data directory (empty: auto). Relative paths are resolved by the ServerApp.
    strategy : str
        One of :data:`STRATEGIES`.
    proximal_mu, server_lr, trim_beta, krum_malicious
        FedProx μ, FedAdam η, FedTrimmedAvg β and Krum's number of malicious nodes.
    max_update_norm : float
        Reject replies whose update ‖reply − global‖₂ exceeds this (``0``: no bound).
    dp_noise, dp_clip : float
        Server-side DP (fixed clipping); enabled when ``dp_clip > 0``.
    resume : bool
        Continue from ``<output_dir>/global/latest.safetensors`` and each client's private state.
    audit_log : str
        If set, each client appends key names and SHA-256 digests of every outgoing reply array here.
    """

    task: str = "sst2"
    method: str = "lopa"
    model: str = "default"
    encoder: str = "default"
    m: int = 10
    r: int = 4
    hidden: int = 256
    zs_init: str = "normal"
    num_server_rounds: int = 3
    local_epochs: int = 1
    local_steps: int = 10
    batch_size: int = 16
    lr: float = 1e-3
    max_length: int = 0
    max_new_tokens: int = 0
    federate: str = "zs"
    partitioner: str = "iid"
    alpha: float = 0.5
    classes_per_partition: int = 1
    pool_size: int = 2000
    test_fraction: float = 0.2
    max_test_examples: int = 200
    seed: int = 9876
    fraction_train: float = 1.0
    fraction_evaluate: float = 1.0
    min_nodes: int = 2
    round_timeout: float = 600.0
    output_dir: str = "runs/fed"
    private_dir: str = ""
    data_dir: str = ""
    strategy: str = "fedavg"
    proximal_mu: float = 0.01
    server_lr: float = 0.1
    trim_beta: float = 0.2
    krum_malicious: int = 0
    max_update_norm: float = 100.0
    dp_noise: float = 0.0
    dp_clip: float = 0.0
    resume: bool = False
    audit_log: str = ""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"method: unknown {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.federate not in FEDERATE_MODES:
            raise ConfigError(f"federate: unknown {self.federate!r}; choose one of {', '.join(FEDERATE_MODES)}")
        if self.partitioner not in PARTITIONERS:
            raise ConfigError(f"partitioner: unknown {self.partitioner!r}; choose one of {', '.join(PARTITIONERS)}")
        if self.strategy.lower() not in STRATEGIES:
            raise ConfigError(f"strategy: unknown {self.strategy!r}; choose one of {', '.join(STRATEGIES)}")
        positive = ("num_server_rounds", "local_epochs", "batch_size", "min_nodes", "classes_per_partition", "m", "r")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{key_of(name)} must be >= 1, got {getattr(self, name)!r}")
        for name in ("local_steps", "pool_size", "max_test_examples", "krum_malicious", "max_length", "max_new_tokens"):
            if int(getattr(self, name)) < 0:
                raise ConfigError(f"{key_of(name)} must be >= 0, got {getattr(self, name)!r}")
        for name in ("lr", "max_update_norm", "dp_noise", "dp_clip", "proximal_mu"):
            if float(getattr(self, name)) < 0:
                raise ConfigError(f"{key_of(name)} must be >= 0, got {getattr(self, name)!r}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError(f"test-fraction must be in (0, 1), got {self.test_fraction!r}")
        for name in ("fraction_train", "fraction_evaluate"):
            if not 0.0 < float(getattr(self, name)) <= 1.0:
                raise ConfigError(f"{key_of(name)} must be in (0, 1], got {getattr(self, name)!r}")
        if not self.alpha > 0:
            raise ConfigError(f"alpha must be > 0, got {self.alpha!r}")
        if not self.round_timeout > 0:
            raise ConfigError(f"round-timeout must be > 0, got {self.round_timeout!r}")
        if not 0.0 <= self.trim_beta < 0.5:
            raise ConfigError(f"trim-beta must be in [0, 0.5), got {self.trim_beta!r}")
        if self.dp_noise > 0 and self.dp_clip <= 0:
            raise ConfigError("dp-noise > 0 needs dp-clip > 0 (the clipping norm)")
        if not self.is_code_task:
            try:
                get_task(self.task)
            except KeyError:
                raise ConfigError(
                    f"task: unknown {self.task!r}; choose a GLUE task ({', '.join(TASKS)}) "
                    f"or a code task ({', '.join(CODE_TASKS)})"
                ) from None
        else:
            if self.partitioner != "iid":
                raise ConfigError(
                    f"partitioner: {self.partitioner!r} partitions by label, and code task {self.task!r} has no "
                    "labels; use partitioner iid"
                )
            if self.method == "head":
                raise ConfigError("method: 'head' trains a classification head, which a code task does not have")
        self.lopa_config()  # validates m, r, hidden
        self.train_config()

    # ------------------------------------------------------------------ parsing
    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> FedSettings:
        """Parse a Flower run config (hyphenated keys); unknown keys are ignored.

        Raises
        ------
        ConfigError
            A value has the wrong type or is out of range; the message names the key.
        """
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in run_config.items():
            name = str(key).replace("-", "_")
            if name not in fields:
                continue
            default = fields[name].default
            try:
                if isinstance(default, bool):
                    if isinstance(value, str):
                        value = value.strip().lower() in ("1", "true", "yes", "on")
                    kwargs[name] = bool(value)
                elif isinstance(default, int):
                    if isinstance(value, float) and not value.is_integer():
                        raise ValueError("not an integer")
                    kwargs[name] = int(value)
                elif isinstance(default, float):
                    kwargs[name] = float(value)
                else:
                    kwargs[name] = str(value)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"{key}: cannot use {value!r} as {type(default).__name__} ({exc})") from exc
        if "strategy" in kwargs:
            kwargs["strategy"] = kwargs["strategy"].lower()
        return cls(**kwargs)

    def to_run_config(self) -> dict[str, Any]:
        """Hyphenated run-config view (what ``[tool.flwr.app.config]`` holds)."""
        return {key_of(k): v for k, v in dataclasses.asdict(self).items()}

    # ---------------------------------------------------------------- derived
    @property
    def is_code_task(self) -> bool:
        """Whether ``task`` is a code task (CruxEval-O/I, MBPP) rather than a GLUE task."""
        return is_code_task(self.task)

    def task_spec(self) -> Task | CodeTask:
        """The task object (:class:`lopa_fed.tasks.Task` or :class:`lopa_fed.code_tasks.CodeTask`)."""
        return get_code_task(self.task) if self.is_code_task else get_task(self.task)

    @property
    def model_name(self) -> str:
        """The frozen model to load: ``model``, with ``default`` meaning SmolLM2 for code tasks."""
        return "smollm2" if self.is_code_task and self.model == "default" else self.model

    @property
    def kind(self) -> str:
        """Frozen-model kind: ``causal`` for code tasks, else ``auto``."""
        return "causal" if self.is_code_task else "auto"

    @property
    def token_limit(self) -> int:
        """``max_length``, or the task's default when it is 0 (128 GLUE, 512 code)."""
        return self.max_length or (512 if self.is_code_task else 128)

    def lopa_config(self) -> LoPAConfig:
        """The prompt method and sizes."""
        return LoPAConfig(method=self.method, m=self.m, r=self.r, hidden=self.hidden, zs_init=self.zs_init)

    def train_config(self, seed: int | None = None) -> TrainConfig:
        """Local training budget (``seed`` overrides the run seed, e.g. per round and partition)."""
        return TrainConfig(
            lr=self.lr if self.lr > 0 else None,
            epochs=self.local_epochs,
            max_steps=self.local_steps if self.local_steps > 0 else None,
            batch_size=self.batch_size,
            seed=self.seed if seed is None else seed,
            max_length=self.token_limit,
        )

    def fingerprint(self) -> str:
        """What a private state file must match to be restored (task, method, sizes, models)."""
        return "|".join(
            str(x) for x in (self.task, self.method, self.m, self.r, self.hidden, self.model, self.encoder, self.federate)
        )


def key_of(field_name: str) -> str:
    """Run-config key of a :class:`FedSettings` field (``local_steps`` → ``local-steps``)."""
    return field_name.replace("_", "-")


def federated_names(roles: Mapping[str, str], federate: str) -> list[str]:
    """Names of the tensors a ``federate`` mode sends, in the model's stable order.

    Parameters
    ----------
    roles : mapping
        ``PromptedModel.roles()``: ``{name: "shared" | "private"}``.
    federate : str
        ``zs``: the method's shared tensors (LoPA/PT: ``prompt.zs``; IDPG: the generator;
        LoRA: the adapters; plus the classifier head ``head.*`` when the frozen model has one).
        ``zs+heads``: the shared tensors and the private prompt heads. ``all``: every trainable
        tensor. ``none``: nothing (local-only training).

    Returns
    -------
    list of str
    """
    if federate not in FEDERATE_MODES:
        raise ConfigError(f"federate: unknown {federate!r}; choose one of {', '.join(FEDERATE_MODES)}")
    if federate == "none":
        return []
    if federate == "all":
        return list(roles)
    if federate == "zs+heads":
        return [n for n, r in roles.items() if r == "shared" or n.startswith("prompt.")]
    return [n for n, r in roles.items() if r == "shared"]


def absolute(path: str, base: Path | None = None) -> str:
    """``path`` made absolute against ``base`` (default: cwd), with ``~`` expanded; ``""`` stays ``""``."""
    if not path:
        return ""
    p = Path(os.path.expanduser(path))
    if not p.is_absolute():
        p = (base or Path.cwd()) / p
    return str(p.resolve())
