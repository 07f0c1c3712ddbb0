"""The federated round loop run by the ServerApp.

It drives a ``flwr.serverapp.strategy`` strategy through the Grid the way
``Strategy.start`` does (configure → send and receive → aggregate), in three stages:

1. :func:`start_federation`: build the model once to learn the federated tensors, resume
   or start fresh, wrap the strategy in :class:`~server.validation.ReplyValidation` (every
   reply is validated before the strategy sees it), write ``run.json``;
2. :func:`run_round`, per round: :func:`train_stage`, :func:`evaluate_stage`, then the
   round's globals and record are saved (:mod:`server.rundir`, :mod:`server.metrics`);
3. the run is marked completed.

Output directory layout (see :mod:`server.rundir` and :mod:`server.metrics`)::

    run.json, state.json           run info; state-tag and last completed round (for --resume)
    rounds.jsonl / rounds.json     one record per round
    rounds.png                     accuracy and bytes against round
    global/round-NNN.safetensors   global shared tensors after round NNN; global/latest.safetensors
    private/                       client private state (default private-dir)
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid

from lopa_fed.federation import (
    ACCURACY,
    DATA_DIR,
    PRIVATE_DIR,
    STATE_TAG,
    FedSettings,
    RunPaths,
    federated_names,
    new_model,
    run_paths,
)

from .metrics import RoundLog, payload_bytes, weighted_stats
from .privacy import PrivacyLedger
from .rundir import RunDir
from .strategy import build_strategy
from .tiers import add_tiers
from .validation import ReplyValidation, Screened, Spec, specs_of

log = logging.getLogger("flwr.lopa_fed.server")


@dataclass
class Federation:
    """What a run carries from round to round."""

    settings: FedSettings
    paths: RunPaths
    rundir: RunDir
    names: list[str]
    specs: dict[str, Spec]
    strategy: ReplyValidation
    arrays: dict[str, np.ndarray]
    state_tag: str
    first_round: int
    rounds: RoundLog
    info: dict[str, Any]
    privacy: PrivacyLedger | None = None  # server-side DP runs: the epsilon ledger (server.privacy)

    def config(self) -> ConfigRecord:
        """The ConfigRecord every message carries: state-tag, private-dir, data-dir."""
        return ConfigRecord(
            {STATE_TAG: self.state_tag, PRIVATE_DIR: self.paths.private_dir, DATA_DIR: self.paths.data_dir}
        )


@dataclass
class Exchange:
    """One send-and-receive: the messages, the replies and the payload bytes each way."""

    sent: list[Message]
    replies: list[Message]
    bytes_down: int
    bytes_up: int

    @property
    def missing(self) -> int:
        """Messages without a reply (timed out)."""
        return len(self.sent) - len(self.replies)


@dataclass
class TrainStage:
    """A round's training: the exchange, the screened replies and whether the globals moved."""

    exchange: Exchange
    screened: Screened
    updated: bool = False
    update_norm: float = 0.0
    metrics: list[Any] = field(default_factory=list)


@dataclass
class EvaluateStage:
    """A round's evaluation: the exchange and the screened replies."""

    exchange: Exchange
    screened: Screened
    metrics: list[Any] = field(default_factory=list)


def run_federation(grid: Grid, settings: FedSettings) -> dict[str, Any]:
    """Run (or resume) the federation described by ``settings`` on ``grid``.

    Returns
    -------
    dict
        ``output_dir``, ``rounds`` (the per-round records) and ``federated`` (tensor names).
    """
    fed = start_federation(grid, settings)
    for rnd in range(fed.first_round, settings.server.num_server_rounds + 1):
        run_round(grid, fed, rnd)
    fed.info["status"] = "completed"
    # rounds in which no client's train reply was usable: the launcher exits non-zero for them
    fed.info["rounds_without_clients"] = [
        int(r["round"]) for r in fed.rounds.records if int(r["sampled"]) and not int(r["replied"])
    ]
    if fed.privacy is not None and fed.rounds.records:
        fed.info["privacy"] = fed.rounds.records[-1].get("dp")
    fed.rundir.write_info(fed.info)
    return {"output_dir": str(fed.paths.output_dir), "rounds": fed.rounds.records, "federated": fed.names}


def start_federation(grid: Grid, settings: FedSettings) -> Federation:
    """Stage 1: learn the federated tensors, resume or start fresh, build the strategy, write ``run.json``.

    Raises
    ------
    CheckpointError
        ``resume`` is set and the saved state cannot be used.
    """
    paths = run_paths(settings.paths)
    rundir = RunDir(paths.output_dir)
    model = new_model(settings)
    names = federated_names(model.roles(), settings.federate)
    arrays = {k: v.numpy() for k, v in model.state(names).items()}
    specs = specs_of(arrays)
    tag, first, keep = uuid.uuid4().hex, 1, None
    if settings.server.resume:
        resumed = rundir.resume(specs)
        if resumed is None:
            log.warning("resume requested but %s has no state.json; starting a fresh run", paths.output_dir)
        else:
            tag, keep, arrays = resumed.state_tag, resumed.last_round, resumed.arrays
            first = keep + 1
            log.info("resuming run %s from round %d (state-tag %s)", paths.output_dir, first, tag)
    num_nodes = len(list(grid.get_node_ids()))
    inner = build_strategy(settings, num_nodes or None)
    strategy = ReplyValidation(inner, specs, settings.server.max_update_norm)
    info = {
        "settings": settings.to_run_config(),
        "output_dir": str(paths.output_dir),
        "private_dir": paths.private_dir,
        "data_dir": paths.data_dir,
        "federated": names,
        "federated_params": int(sum(int(np.prod(s.shape)) for s in specs.values())),
        "trainable_params": int(model.num_trainable()),
        "roles": model.roles(),
        "strategy": type(inner).__name__,
        "state-tag": tag,
        "status": "running",
    }
    rundir.write_info(info)
    if first == 1:
        rundir.save_global(arrays, 0, tag)
    log.info(
        "federating %s (%d params) with %s; output %s; private state %s",
        names or "nothing (federate=none)", info["federated_params"], info["strategy"], paths.output_dir,
        paths.private_dir,
    )
    rounds = RoundLog(paths.output_dir, keep_until=keep)
    fed = Federation(settings, paths, rundir, names, specs, strategy, arrays, tag, first, rounds, info)
    fed.privacy = PrivacyLedger.start(
        settings, getattr(inner, "num_sampled_clients", settings.server.min_nodes), rounds.records
    )
    return fed


def run_round(grid: Grid, fed: Federation, rnd: int) -> dict[str, Any]:
    """Stage 2: train, evaluate, checkpoint and log one round; returns its record."""
    t0 = time.time()
    log.info("[lopa-fed] round %d/%d", rnd, fed.settings.server.num_server_rounds)
    train = train_stage(grid, fed, rnd)
    evaluation = evaluate_stage(grid, fed, rnd)
    fed.rundir.save_global(fed.arrays, rnd, fed.state_tag)
    fed.rundir.save_state(fed.state_tag, rnd)
    rec = round_record(fed.settings, rnd, train, evaluation, time.time() - t0)
    add_tiers(rec, train.screened.accepted, evaluation.screened.accepted)  # per-tier accuracy (server.tiers)
    if fed.privacy is not None:  # server-side DP: the round's release and epsilon so far (server.privacy)
        rec["dp"] = fed.privacy.account(
            len(train.exchange.sent), len(list(grid.get_node_ids())),
            [float(m["num-examples"]) for m in train.metrics], train.updated,
        )
    fed.rounds.append(rec)
    log.info(
        "[lopa-fed] round %d: train loss %s, acc %s (min %s, max %s), up %d B, down %d B, replied %d, failed %d, "
        "rejected %d",
        rnd, _fmt(rec["train_loss"]), _fmt(rec["acc_mean"]), _fmt(rec["acc_min"]), _fmt(rec["acc_max"]),
        rec["bytes_up"], rec["bytes_down"], rec["replied"], rec["failed"], rec["rejected"],
    )
    return rec


def exchange(grid: Grid, messages: list[Message], timeout: float) -> Exchange:
    """Send ``messages`` and wait up to ``timeout`` s for the replies."""
    replies = list(grid.send_and_receive(messages, timeout=timeout)) if messages else []
    return Exchange(messages, replies, payload_bytes(messages), payload_bytes(replies))


def _to_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()}) if arrays else ArrayRecord()


def _metrics_of(messages: list[Message]) -> list[Any]:
    return [next(iter(m.content.metric_records.values())) for m in messages]


def train_stage(grid: Grid, fed: Federation, rnd: int) -> TrainStage:
    """Configure, send and receive, then aggregate the valid replies into new globals (when there are any)."""
    msgs = list(fed.strategy.configure_train(rnd, _to_record(fed.arrays), fed.config(), grid))
    ex = exchange(grid, msgs, fed.settings.server.round_timeout)
    try:
        agg, _ = fed.strategy.aggregate_train(rnd, ex.replies)
    except Exception as exc:  # noqa: BLE001 - keep the globals, log why
        log.warning("round %d: aggregation failed, globals unchanged: %s", rnd, exc)
        agg = None
    stage = TrainStage(ex, fed.strategy.train_screens[rnd])
    stage.metrics = _metrics_of(stage.screened.accepted)
    if agg is not None:
        new = {k: v.numpy() for k, v in agg.items()}
        stage.update_norm = math.sqrt(
            sum(float(np.sum((new[k].astype(np.float64) - fed.arrays[k]) ** 2)) for k in fed.names)
        )
        fed.arrays, stage.updated = new, True
    return stage


def evaluate_stage(grid: Grid, fed: Federation, rnd: int) -> EvaluateStage:
    """Send the (new) globals for personalised evaluation and screen the replies."""
    msgs = list(fed.strategy.configure_evaluate(rnd, _to_record(fed.arrays), fed.config(), grid))
    ex = exchange(grid, msgs, fed.settings.server.round_timeout)
    try:
        fed.strategy.aggregate_evaluate(rnd, ex.replies)
    except Exception as exc:  # noqa: BLE001 - our own statistics below do not depend on it
        log.warning("round %d: strategy.aggregate_evaluate failed: %s", rnd, exc)
    stage = EvaluateStage(ex, fed.strategy.eval_screens[rnd])
    stage.metrics = _metrics_of(stage.screened.accepted)
    return stage


def round_record(
    settings: FedSettings, rnd: int, train: TrainStage, evaluation: EvaluateStage, seconds: float
) -> dict[str, Any]:
    """The round's entry of ``rounds.json``."""
    tm, em = train.metrics, evaluation.metrics
    n_train = [float(m["num-examples"]) for m in tm]
    n_eval = [float(m["num-examples"]) for m in em]
    acc = weighted_stats([float(m[ACCURACY]) for m in em], n_eval)
    tx, ev, screened = train.exchange, evaluation.exchange, train.screened
    return {
        "round": rnd,
        "label": f"{settings.task} {settings.lopa.method} federate={settings.federate} {settings.server.strategy}",
        "metric": settings.metric,
        "train_loss": weighted_stats([float(m["train-loss"]) for m in tm], n_train)["mean"] if tm else None,
        "acc_mean": acc["mean"],
        "acc_min": acc["min"],
        "acc_max": acc["max"],
        "acc_std": acc["std"],
        "score_mean": weighted_stats([float(m["score"]) for m in em], n_eval)["mean"],
        "eval_loss": weighted_stats([float(m["eval-loss"]) for m in em], n_eval)["mean"],
        "per_client": {
            str(int(m["partition-id"])): {"accuracy": float(m[ACCURACY]), "num_examples": int(m["num-examples"])}
            for m in em
        },
        "num_train_examples": int(sum(n_train)),
        "num_eval_examples": int(sum(n_eval)),
        "bytes_up": tx.bytes_up + ev.bytes_up,
        "bytes_down": tx.bytes_down + ev.bytes_down,
        "bytes_up_train": tx.bytes_up,
        "bytes_down_train": tx.bytes_down,
        "bytes_down_eval": ev.bytes_down,
        "sampled": len(tx.sent),
        "replied": len(screened.accepted),
        "failed": len(screened.failed) + tx.missing,
        "rejected": len(screened.rejected),
        "rejected_reasons": [{"node": n, "reason": r} for n, r in screened.rejected],
        "failed_reasons": [{"node": n, "reason": r} for n, r in screened.failed],
        "eval_replied": len(evaluation.screened.accepted),
        "eval_failed": len(evaluation.screened.failed) + len(evaluation.screened.rejected) + ev.missing,
        "eval_failed_reasons": [
            {"node": n, "reason": r} for n, r in evaluation.screened.failed + evaluation.screened.rejected
        ],
        "global_updated": train.updated,
        "update_norm": train.update_norm,
        "model_loads_max": int(max([int(m["model-loads"]) for m in tm + em], default=0)),
        "private_restored": int(sum(int(m["private-restored"]) for m in tm)),
        "seconds": seconds,
    }


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"
