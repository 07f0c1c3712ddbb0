"""Federation-only settings: how data is partitioned, how the server runs rounds, where files go.

Each is a frozen dataclass that validates itself with messages naming the run-config key
(``pool_size`` is the key ``pool-size``). The prompt method and local training are
:class:`lopa_fed.config.LoPAConfig` and :class:`lopa_fed.config.TrainConfig`; together they
make up :class:`lopa_fed.federation.FedSettings`. Each field's ``help`` is the run-config
key's documentation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ConfigError

__all__ = ["BAD_PRIVATE_STATE", "PARTITIONERS", "STRATEGIES", "DataConfig", "PathsConfig", "ServerConfig"]

#: Partitioners from flwr-datasets.
PARTITIONERS = ("iid", "dirichlet", "inner-dirichlet", "pathological")
#: Strategies from ``flwr.serverapp.strategy`` selectable by name.
STRATEGIES = ("fedavg", "fedprox", "fedadam", "fedmedian", "fedtrimmedavg", "krum")
#: What a client does with a private-state file of its run it cannot use (``on-bad-private-state``).
BAD_PRIVATE_STATE = ("error", "fresh")


def _help(text: str) -> dict[str, str]:
    return {"help": text}


def _at_least(obj: object, names: tuple[str, ...], low: float) -> None:
    for name in names:
        value = getattr(obj, name)
        if not value >= low:
            raise ConfigError(f"{name.replace('_', '-')} must be >= {low:g}, got {value!r}")


@dataclass(frozen=True)
class DataConfig:
    """How a client's examples are chosen (client side; every process computes the same partitions)."""

    partitioner: str = field(default="iid", metadata=_help(
        "flwr-datasets partitioner: iid; dirichlet (each label spread over clients by Dir(alpha), sizes vary); "
        "inner-dirichlet (equal sizes, label mix ~ Dir(alpha)); pathological (classes-per-partition labels each)"
    ))
    alpha: float = field(default=0.5, metadata=_help("Dirichlet concentration"))
    classes_per_partition: int = field(default=1, metadata=_help("labels per pathological partition"))
    pool_size: int = field(default=2000, metadata=_help("seeded subset of the train split that is partitioned (0: all)"))
    test_fraction: float = field(default=0.2, metadata=_help("local test split of each labelled partition"))
    max_test_examples: int = field(default=200, metadata=_help("cap on each client's test examples (0: none)"))

    def __post_init__(self) -> None:
        if self.partitioner not in PARTITIONERS:
            raise ConfigError(f"partitioner: unknown {self.partitioner!r}; choose one of {', '.join(PARTITIONERS)}")
        _at_least(self, ("classes_per_partition",), 1)
        _at_least(self, ("pool_size", "max_test_examples"), 0)
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError(f"test-fraction must be in (0, 1), got {self.test_fraction!r}")
        if not self.alpha > 0:
            raise ConfigError(f"alpha must be > 0, got {self.alpha!r}")


@dataclass(frozen=True)
class ServerConfig:
    """How the ServerApp runs rounds: sampling, timeouts, the strategy, validation bounds and DP."""

    num_server_rounds: int = field(default=3, metadata=_help("total rounds (a resumed run continues up to this)"))
    fraction_train: float = field(default=1.0, metadata=_help("share of nodes sampled for training"))
    fraction_evaluate: float = field(default=1.0, metadata=_help("share of nodes sampled for evaluation"))
    min_nodes: int = field(default=2, metadata=_help("minimum train, evaluate and available nodes"))
    round_timeout: float = field(default=600.0, metadata=_help("seconds to wait for the replies of a round"))
    strategy: str = field(default="fedavg", metadata=_help(f"one of {', '.join(STRATEGIES)}"))
    proximal_mu: float = field(default=0.01, metadata=_help("FedProx mu"))
    server_lr: float = field(default=0.1, metadata=_help("FedAdam eta"))
    trim_beta: float = field(default=0.2, metadata=_help("FedTrimmedAvg beta, in [0, 0.5)"))
    krum_malicious: int = field(default=0, metadata=_help("Krum's number of malicious nodes"))
    max_update_norm: float = field(default=100.0, metadata=_help(
        "drop replies whose update norm ||reply - global||_2 exceeds this (0: no bound)"
    ))
    dp_noise: float = field(default=0.0, metadata=_help("server-side DP noise multiplier (needs dp-clip)"))
    dp_clip: float = field(default=0.0, metadata=_help("server-side DP clipping norm; > 0 enables DP"))
    dp_delta: float = field(default=1e-5, metadata=_help(
        "delta at which the RDP accountant reports epsilon per round (server-side DP runs; in (0, 1))"
    ))
    resume: bool = field(default=False, metadata=_help(
        "continue from <output-dir>/global/latest.safetensors and each client's private state"
    ))
    secagg: bool = field(default=False, metadata=_help(
        "secure aggregation of the shared tensors with Flower's SecAgg+ (federate = zs, strategy fedavg, no DP): "
        "the server sees only the sum of masked, quantized client updates"
    ))
    secagg_clip: float = field(default=8.0, metadata=_help(
        "SecAgg+: each client clips its Zs values to +-secagg-clip and scales them into SecAgg+'s +-8 range "
        "(2^22 quantization levels); the server unscales the aggregate"
    ))
    secagg_shares: float = field(default=1.0, metadata=_help(
        "SecAgg+: share of the sampled clients each client's secrets are split among, in (0, 1]"
    ))
    secagg_threshold: float = field(default=0.5, metadata=_help(
        "SecAgg+: share of those shares needed to reconstruct a secret (at least 2), in (0, 1]; lower tolerates "
        "more dropped clients, higher resists more colluding ones"
    ))

    def __post_init__(self) -> None:
        object.__setattr__(self, "strategy", str(self.strategy).lower())
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"strategy: unknown {self.strategy!r}; choose one of {', '.join(STRATEGIES)}")
        _at_least(self, ("num_server_rounds", "min_nodes"), 1)
        _at_least(self, ("krum_malicious", "max_update_norm", "dp_noise", "dp_clip", "proximal_mu"), 0)
        for name in ("fraction_train", "fraction_evaluate"):
            if not 0.0 < float(getattr(self, name)) <= 1.0:
                raise ConfigError(f"{name.replace('_', '-')} must be in (0, 1], got {getattr(self, name)!r}")
        if not self.round_timeout > 0:
            raise ConfigError(f"round-timeout must be > 0, got {self.round_timeout!r}")
        if not 0.0 <= self.trim_beta < 0.5:
            raise ConfigError(f"trim-beta must be in [0, 0.5), got {self.trim_beta!r}")
        if not 0.0 < self.dp_delta < 1.0:
            raise ConfigError(f"dp-delta must be in (0, 1), got {self.dp_delta!r}")
        if self.dp_noise > 0 and self.dp_clip <= 0:
            raise ConfigError("dp-noise > 0 needs dp-clip > 0 (the clipping norm)")
        if not self.secagg_clip > 0:
            raise ConfigError(f"secagg-clip must be > 0, got {self.secagg_clip!r}")
        for name in ("secagg_shares", "secagg_threshold"):
            if not 0.0 < float(getattr(self, name)) <= 1.0:
                raise ConfigError(f"{name.replace('_', '-')} must be in (0, 1], got {getattr(self, name)!r}")
        if self.secagg and self.strategy != "fedavg":
            raise ConfigError(f"secagg = true computes a weighted mean (strategy fedavg), not {self.strategy!r}")
        if self.secagg and self.dp_clip > 0:
            raise ConfigError("secagg = true cannot be combined with server-side DP (dp-clip > 0)")
        if self.secagg and self.min_nodes < 2:
            raise ConfigError(f"secagg = true needs min-nodes >= 2 (SecAgg+ masks among clients), got {self.min_nodes}")


@dataclass(frozen=True)
class PathsConfig:
    """Where a run reads and writes (relative paths are resolved by the launcher and the ServerApp)."""

    output_dir: str = field(default="runs/fed", metadata=_help("server output directory"))
    private_dir: str = field(default="", metadata=_help("client private-state directory (empty: <output-dir>/private)"))
    data_dir: str = field(default="", metadata=_help("directory holding SST-2/, CruxEval/, ... (empty: auto)"))
    audit_log: str = field(default="", metadata=_help(
        "if set, each client appends key names and SHA-256 digests of every outgoing reply array here"
    ))
    on_bad_private_state: str = field(default="error", metadata=_help(
        "a client's private-state file of this run is corrupt or has the wrong tensors: error (the client "
        "fails, naming the file) or fresh (the file is moved to <file>.bad and the client starts fresh heads)"
    ))

    def __post_init__(self) -> None:
        if self.on_bad_private_state not in BAD_PRIVATE_STATE:
            raise ConfigError(
                f"on-bad-private-state: unknown {self.on_bad_private_state!r}; choose one of {', '.join(BAD_PRIVATE_STATE)}"
            )
