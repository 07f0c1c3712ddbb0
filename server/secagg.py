"""The ServerApp's secure-aggregation path (``secagg = true``): Flower's SecAgg+ on the legacy workflow.

SecAgg+ exists only on Flower's legacy path, so this loop drives ``SecAggPlusWorkflow`` with a
``LegacyContext`` (a legacy FedAvg, a client manager kept up to date from the Grid) the way
``DefaultWorkflow`` does, round by round, and keeps the run directory of the normal path
(:mod:`server.loop`): ``run.json`` (status), ``state.json`` / ``global/`` (``--resume``),
``rounds.json`` / ``rounds.png`` with the same fields, plus per round:

* ``secagg``: the four stages (seconds, serialized bytes each way, replies, errors), the weight
  bound ``max_weight``, ``clip``, the per-element ``error_bound`` of the aggregate and the
  SHA-256 of each node's masked vector (:class:`server.secagg_grid.MeteredGrid`);
* ``OUT/secagg/round-NNN-masked.npz``: the masked vectors as received.

The aggregate. Client *i* sends ``x_i = clip(z_i, ±C)·8/C`` (``C = secagg-clip``,
:mod:`clients.secagg`); SecAgg+ quantizes ``r_i·x_i`` with ``r_i = n_i / max_weight`` to
``Q = 2²²`` levels over ±8 (stochastic rounding) and the server recovers only
``Σ r̂_i·x_i / Σ r̂_i`` (``r̂_i``: ``r_i`` quantized to ``1/Q``), which :meth:`SecAggFedAvg.aggregate_fit`
unscales by ``C/8``. Against exact FedAvg of the clipped Zs, every element is off by at most
``3·n·C / (Q·Σ r̂_i)`` (:func:`error_bound`: one quantization step per client plus the weight
rounding), e.g. 5.7e-6 for C = 8 and equal weights ``r_i = 1``. ``max_weight`` is the largest
``num-examples`` reported so far (``pool-size`` in round 1), so ``r_i ≤ 1``.

What the server cannot do here: look at one client's update. Reply validation is limited to
the metrics of each reply and the aggregate (names, shapes, finite values, update norm within
``max-update-norm``); the clipping bounds every client's influence on every element instead.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import flwr.compat.common.recorddict_compat as compat
import numpy as np
from flwr.app import ConfigRecord, Context, Message
from flwr.app.message_type import MessageType
from flwr.common import EvaluateIns, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server import ServerConfig as LegacyServerConfig
from flwr.server.compat.app_utils import start_update_client_manager_thread
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import FedAvg as LegacyFedAvg
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey

from lopa_fed.federation import (
    DATA_DIR,
    EVAL_METRIC_KEYS,
    PRIVATE_DIR,
    SERVER_ROUND,
    STATE_TAG,
    TRAIN_METRIC_KEYS,
    FedSettings,
)

from .loop import EvaluateStage, Exchange, Federation, TrainStage, round_record, start_federation
from .secagg_grid import MeteredGrid
from .validation import Screened, specs_of

log = logging.getLogger("flwr.lopa_fed.server")

#: SecAgg+'s clipping range and quantization levels (Flower's defaults; clients scale into ±SECAGG_RANGE).
SECAGG_RANGE = 8.0
QUANTIZATION = 2**22


def error_bound(num_examples: list[float], max_weight: float, clip: float) -> float:
    """Largest per-element difference between the SecAgg+ aggregate and exact FedAvg of the clipped Zs.

    ``3·n·C / (Q·Σ r̂_i)`` plus float32 rounding of the result: stochastic rounding is off by
    less than one step ``2·8/Q`` per client (``C/8`` after unscaling), and quantizing each weight
    ``r_i`` to ``1/Q`` moves a weighted mean of values within ``±C`` by at most ``n·C/(Q·Σ r̂_i)``.
    """
    q = [round(n / max_weight * QUANTIZATION) / QUANTIZATION for n in num_examples]
    if not q or sum(q) <= 0:
        return float("inf")
    return 3.0 * len(q) * clip / (QUANTIZATION * sum(q)) + clip * 2.0**-23


def _metric_problem(metrics: dict[str, Any], keys: frozenset[str]) -> str | None:
    if set(metrics) != set(keys):
        return f"metric keys {sorted(metrics)} differ from the protocol's {sorted(keys)}"
    for k, v in metrics.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
            return f"metric {k!r} is not a finite number ({v!r})"
    if not float(metrics["num-examples"]) > 0:
        return f"num-examples must be > 0, got {metrics['num-examples']!r}"
    return None


class SecAggFedAvg(LegacyFedAvg):
    """Legacy FedAvg for ``SecAggPlusWorkflow``: our config per round; unscale and check the aggregate.

    After each round, :attr:`last` holds ``accepted`` (train metrics), ``rejected`` (node, reason)
    and ``aggregate`` (``{name: float32 array}`` or ``None``).
    """

    def __init__(self, fed: Federation) -> None:
        cfg = fed.settings.server
        super().__init__(
            fraction_fit=cfg.fraction_train, fraction_evaluate=cfg.fraction_evaluate,
            min_fit_clients=cfg.min_nodes, min_evaluate_clients=cfg.min_nodes, min_available_clients=cfg.min_nodes,
            on_fit_config_fn=self._config, on_evaluate_config_fn=self._config, accept_failures=True,
        )
        self.fed = fed
        self.last: dict[str, Any] = {}

    def _config(self, server_round: int) -> dict[str, Any]:
        p = self.fed.paths
        return {STATE_TAG: self.fed.state_tag, PRIVATE_DIR: p.private_dir, DATA_DIR: p.data_dir, SERVER_ROUND: server_round}

    def aggregate_fit(self, server_round: int, results: list, failures: list) -> tuple[Any, dict[str, Any]]:
        """``results`` all carry the unmasked aggregate (SecAgg+ put it there); unscale and check it."""
        fed, accepted, rejected = self.fed, [], []
        for proxy, res in results:
            problem = _metric_problem(dict(res.metrics), TRAIN_METRIC_KEYS)
            if problem is None:
                accepted.append(dict(res.metrics))
            else:  # its masked Zs are already inside the sum; report it, the clipping bounds its effect
                rejected.append((int(proxy.node_id), f"{problem} (its masked Zs are in the SecAgg+ sum)"))
        self.last = {"accepted": accepted, "rejected": rejected, "aggregate": None, "num_examples": [
            float(res.num_examples) for _, res in results]}
        if not results:
            return None, {}
        scale = fed.settings.server.secagg_clip / SECAGG_RANGE
        summed = parameters_to_ndarrays(results[0][1].parameters)
        if len(summed) != len(fed.names):
            log.warning("round %d: SecAgg+ aggregate has %d arrays, expected %d", server_round, len(summed), len(fed.names))
            return None, {}
        new = {n: (np.asarray(a, np.float64) * scale).astype(fed.specs[n].dtype) for n, a in zip(fed.names, summed)}
        if specs_of(new) != fed.specs or not all(np.all(np.isfinite(v)) for v in new.values()):
            log.warning("round %d: SecAgg+ aggregate has wrong shapes or non-finite values; globals unchanged",
                        server_round)
            return None, {}
        norm = math.sqrt(sum(float(np.sum((new[k].astype(np.float64) - fed.arrays[k]) ** 2)) for k in fed.names))
        bound = fed.settings.server.max_update_norm
        if bound > 0 and norm > bound:
            log.warning("round %d: aggregate update norm %.4g exceeds max-update-norm; globals unchanged", server_round,
                        norm)
            return None, {}
        self.last["aggregate"] = new
        return ndarrays_to_parameters([new[n] for n in fed.names]), {}


def run_secagg(grid: Any, context: Context, settings: FedSettings) -> dict[str, Any]:
    """Run (or resume) a ``secagg = true`` federation on ``grid``; the counterpart of :func:`server.loop.run_federation`."""
    fed = start_federation(grid, settings)
    metered = MeteredGrid(grid, fed.paths.output_dir)
    strategy = SecAggFedAvg(fed)
    ctx = LegacyContext(context, config=LegacyServerConfig(num_rounds=settings.server.num_server_rounds),
                        strategy=strategy)
    cfg = settings.server
    fed.info.update(strategy="SecAggPlusWorkflow + FedAvg", secagg={
        "clip": cfg.secagg_clip, "range": SECAGG_RANGE, "quantization": QUANTIZATION,
        "shares": cfg.secagg_shares, "threshold": cfg.secagg_threshold,
    })
    fed.rundir.write_info(fed.info)
    thread, stop, ready = start_update_client_manager_thread(metered, ctx.client_manager)
    ready.wait()
    seen: list[float] = []
    try:
        for rnd in range(fed.first_round, cfg.num_server_rounds + 1):
            max_weight = max(seen) if seen else float(settings.data.pool_size or 100_000)
            secagg_round(metered, ctx, fed, strategy, rnd, max_weight)
            seen += [float(m["num-examples"]) for m in strategy.last.get("accepted", [])]
    finally:
        stop.set()
        thread.join(timeout=15)
    fed.info["status"] = "completed"
    fed.info["rounds_without_clients"] = [
        int(r["round"]) for r in fed.rounds.records if int(r["sampled"]) and not int(r["replied"])
    ]
    fed.rundir.write_info(fed.info)
    return {"output_dir": str(fed.paths.output_dir), "rounds": fed.rounds.records, "federated": fed.names}


def secagg_round(
    grid: MeteredGrid, ctx: LegacyContext, fed: Federation, strategy: SecAggFedAvg, rnd: int, max_weight: float
) -> dict[str, Any]:
    """One round: SecAgg+ training, evaluation, checkpoint and the record in ``rounds.json``."""
    t0 = time.time()
    log.info("[lopa-fed] round %d/%d (SecAgg+)", rnd, fed.settings.server.num_server_rounds)
    grid.begin_round(rnd)
    ctx.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({WorkflowKey.CURRENT_ROUND: rnd})
    ctx.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(
        ndarrays_to_parameters([fed.arrays[n] for n in fed.names]), True
    )
    cfg = fed.settings.server
    strategy.last = {}
    SecAggPlusWorkflow(
        num_shares=float(cfg.secagg_shares), reconstruction_threshold=float(cfg.secagg_threshold),
        max_weight=float(max_weight), clipping_range=SECAGG_RANGE, quantization_range=QUANTIZATION,
        timeout=cfg.round_timeout,
    )(grid, ctx)
    train = _train_stage(grid, fed, strategy)
    fit_stages = [s.as_dict() for s in grid.stages]
    evaluation = _evaluate_stage(grid, ctx, fed, strategy, rnd)
    fed.rundir.save_global(fed.arrays, rnd, fed.state_tag)
    fed.rundir.save_state(fed.state_tag, rnd)
    rec = round_record(fed.settings, rnd, train, evaluation, time.time() - t0)
    down, up, seconds = grid.totals()
    rec["secagg"] = {
        "stages": fit_stages, "max_weight": max_weight, "clip": cfg.secagg_clip, "seconds": seconds,
        "bytes_down": down, "bytes_up": up,
        "error_bound": error_bound(strategy.last.get("num_examples", []), max_weight, cfg.secagg_clip),
        "masked_sha256": {str(k): v for k, v in grid.masked_sha256.items()},
    }
    rec["bytes_measure"] = "serialized RecordDict of every message (all four SecAgg+ stages and evaluate)"
    fed.rounds.append(rec)
    log.info("[lopa-fed] round %d (SecAgg+): acc %s, replied %d, failed %d, up %d B, down %d B, %.1fs", rnd,
             rec["acc_mean"], rec["replied"], rec["failed"], rec["bytes_up"], rec["bytes_down"], rec["seconds"])
    return rec


def _train_stage(grid: MeteredGrid, fed: Federation, strategy: SecAggFedAvg) -> TrainStage:
    """The round's training outcome in the normal path's terms (sampled, accepted, failed with reasons)."""
    setup = next((s for s in grid.stages if s.stage == "setup"), None)
    sampled = list(setup.sent) if setup else []
    accepted = strategy.last.get("accepted", [])
    errors: dict[int, str] = {}
    for st in grid.stages:
        for node, reason in st.errors:
            errors.setdefault(node, f"SecAgg+ stage {st.stage}: {reason}")
        for node in set(st.sent) - set(st.replied) - {n for n, _ in st.errors}:
            errors.setdefault(node, f"SecAgg+ stage {st.stage}: no reply within round-timeout")
    if "num_examples" not in strategy.last:  # halted before unmasking: no client's update was used
        for node in sampled:
            errors.setdefault(node, "SecAgg+ halted: too few clients left for the reconstruction threshold")
    failed = list(errors.items())
    screened = Screened(accepted=list(accepted), rejected=list(strategy.last.get("rejected", [])), failed=failed)
    down, up, _ = grid.totals()
    stage = TrainStage(Exchange(sampled, sampled, down, up), screened)
    stage.metrics = list(accepted)
    new = strategy.last.get("aggregate")
    if new is not None:
        stage.update_norm = math.sqrt(
            sum(float(np.sum((new[k].astype(np.float64) - fed.arrays[k]) ** 2)) for k in fed.names)
        )
        fed.arrays, stage.updated = new, True
    return stage


def _evaluate_stage(grid: MeteredGrid, ctx: LegacyContext, fed: Federation, strategy: SecAggFedAvg,
                    rnd: int) -> EvaluateStage:
    """Legacy evaluate messages with the new globals; the replies screened like the normal path's."""
    params = ndarrays_to_parameters([fed.arrays[n] for n in fed.names])
    ins: list[tuple[Any, EvaluateIns]] = strategy.configure_evaluate(rnd, params, ctx.client_manager)
    msgs = [
        Message(content=compat.evaluateins_to_recorddict(e, True), dst_node_id=proxy.node_id,
                message_type=MessageType.EVALUATE, group_id=str(rnd))
        for proxy, e in ins
    ]
    replies = list(grid.send_and_receive(msgs, timeout=fed.settings.server.round_timeout)) if msgs else []
    screened = Screened()
    metrics = []
    for reply in replies:
        node = int(reply.metadata.src_node_id)
        if reply.has_error():
            screened.failed.append((node, f"error reply: {reply.error.reason}"))
            continue
        res = compat.recorddict_to_evaluateres(reply.content)
        problem = _metric_problem(dict(res.metrics), EVAL_METRIC_KEYS)
        if problem is None:
            screened.accepted.append(reply)
            metrics.append(dict(res.metrics))
        else:
            screened.rejected.append((node, problem))
    last = grid.stages[-1] if msgs else None
    ex = Exchange(msgs, replies, last.bytes_down if last else 0, last.bytes_up if last else 0)
    stage = EvaluateStage(ex, screened)
    stage.metrics = metrics
    return stage


__all__ = ["SecAggFedAvg", "error_bound", "run_secagg", "secagg_round"]
