"""The federated round loop run by the ServerApp.

It drives a ``flwr.serverapp.strategy`` strategy through the Grid the way
``Strategy.start`` does (configure → send and receive → aggregate), with three
additions that ``start`` has no hook for: every train reply is validated before the
strategy sees it (:mod:`server.validation`); each round is checkpointed and logged
(``rounds.jsonl``, ``rounds.json``, ``rounds.png``, ``global/round-NNN.safetensors``);
and a run can resume from its last saved round.

Output directory layout::

    run.json                       settings, federated tensor names, status
    state.json                     state-tag and last completed round (for --resume)
    rounds.jsonl / rounds.json     one record per round
    rounds.png                     accuracy and bytes against round
    global/round-NNN.safetensors   global shared tensors after round NNN
    global/latest.safetensors      the newest of those
    private/                       client private state (default private-dir)
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord
from flwr.serverapp import Grid

from clients.local import new_model
from clients.settings import FedSettings, absolute, federated_names
from lopa_fed.checkpoint import CheckpointError, load_tensors, save_tensors
from lopa_fed.tasks import resolve_data_dir

from .metrics import RoundLog, payload_bytes, weighted_stats
from .strategy import build_strategy
from .validation import screen_eval_replies, screen_train_replies, specs_of

log = logging.getLogger("flwr.lopa_fed.server")

STATE_FILE = "state.json"
RUN_FILE = "run.json"


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)


def _to_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()}) if arrays else ArrayRecord()


def _save_global(out: Path, arrays: dict[str, np.ndarray], server_round: int, tag: str) -> None:
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v).copy()) for k, v in arrays.items()}
    meta = {"round": str(server_round), "state-tag": tag, "format": "lopa-fed-global/1"}
    save_tensors(out / "global" / f"round-{server_round:03d}.safetensors", tensors, meta)
    save_tensors(out / "global" / "latest.safetensors", tensors, meta)


def resolve_paths(settings: FedSettings) -> tuple[Path, str, str]:
    """Absolute ``(output dir, private dir, data dir)``; the data dir may be ``""`` (clients resolve it)."""
    out = Path(absolute(settings.output_dir))
    private = absolute(settings.private_dir) or str(out / "private")
    data = absolute(settings.data_dir)
    if not data:
        found = resolve_data_dir(None)
        data = str(found.resolve()) if found is not None else ""
    return out, private, data


def run_federation(grid: Grid, settings: FedSettings) -> dict[str, Any]:
    """Run (or resume) the federation described by ``settings`` on ``grid``.

    Returns
    -------
    dict
        ``output_dir``, ``rounds`` (the per-round records) and ``federated`` (tensor names).
    """
    out, private_dir, data_dir = resolve_paths(settings)
    out.mkdir(parents=True, exist_ok=True)
    model = new_model(settings)
    names = federated_names(model.roles(), settings.federate)
    init = {k: v.numpy() for k, v in model.state(names).items()}
    specs = specs_of(init)

    start, tag, arrays = 1, uuid.uuid4().hex, init
    keep: int | None = None
    state_path = out / STATE_FILE
    if settings.resume and state_path.is_file():
        state = json.loads(state_path.read_text())
        try:
            saved = {k: v.numpy() for k, v in load_tensors(out / "global" / "latest.safetensors").items()} if names else {}
        except CheckpointError as exc:
            raise RuntimeError(f"cannot resume from {out}: {exc}") from exc
        if specs_of(saved) != specs:
            raise RuntimeError(f"cannot resume from {out}: saved globals {sorted(saved)} do not match {sorted(specs)}")
        tag, keep = str(state["state-tag"]), int(state["last-round"])
        start, arrays = keep + 1, saved
        log.info("resuming run %s from round %d (state-tag %s)", out, start, tag)
    elif settings.resume:
        log.warning("resume requested but %s has no %s; starting a fresh run", out, STATE_FILE)

    rounds = RoundLog(out, keep_until=keep)
    num_nodes = len(list(grid.get_node_ids()))
    strategy = build_strategy(settings, num_nodes or None)
    info = {
        "settings": settings.to_run_config(),
        "output_dir": str(out),
        "private_dir": private_dir,
        "data_dir": data_dir,
        "federated": names,
        "federated_params": int(sum(int(np.prod(s.shape)) for s in specs.values())),
        "trainable_params": int(model.num_trainable()),
        "roles": model.roles(),
        "strategy": type(strategy).__name__,
        "state-tag": tag,
        "status": "running",
    }
    _write_json(out / RUN_FILE, info)
    if start == 1:
        _save_global(out, arrays, 0, tag)
    log.info(
        "federating %s (%d params) with %s; output %s; private state %s",
        names or "nothing (federate=none)",
        info["federated_params"],
        info["strategy"],
        out,
        private_dir,
    )
    base = {"state-tag": tag, "private-dir": private_dir, "data-dir": data_dir}

    for rnd in range(start, settings.num_server_rounds + 1):
        t0 = time.time()
        log.info("[lopa-fed] round %d/%d", rnd, settings.num_server_rounds)
        record = ConfigRecord(dict(base))
        msgs = list(strategy.configure_train(rnd, _to_record(arrays), record, grid))
        down_train = payload_bytes(msgs)
        replies = list(grid.send_and_receive(msgs, timeout=settings.round_timeout)) if msgs else []
        up_train = payload_bytes(replies)
        screened = screen_train_replies(replies, specs, arrays, settings.max_update_norm)
        missing = len(msgs) - len(replies)
        updated, update_norm = False, 0.0
        if screened.accepted and names:
            try:
                agg, _ = strategy.aggregate_train(rnd, screened.accepted)
            except Exception as exc:  # noqa: BLE001 - keep the globals, log why
                log.warning("round %d: aggregation failed, globals unchanged: %s", rnd, exc)
                agg = None
            if agg is not None:
                # Server-side optimisers (FedAdam) may return float64: cast back to the model's dtypes.
                new = {k: v.numpy().astype(specs[k].dtype) if k in specs else v.numpy() for k, v in agg.items()}
                if specs_of(new) == specs and all(np.all(np.isfinite(v)) for v in new.values()):
                    update_norm = math.sqrt(
                        sum(float(np.sum((new[k].astype(np.float64) - arrays[k]) ** 2)) for k in names)
                    )
                    arrays, updated = new, True
                else:
                    log.warning("round %d: aggregate has wrong keys/shapes or non-finite values; globals unchanged", rnd)
        elif names:
            log.warning("round %d: no valid train reply; global tensors unchanged", rnd)
        tm = [next(iter(m.content.metric_records.values())) for m in screened.accepted]
        n_train = [float(m["num-examples"]) for m in tm]
        train_loss = weighted_stats([float(m["train-loss"]) for m in tm], n_train)["mean"] if tm else None

        eval_msgs = list(strategy.configure_evaluate(rnd, _to_record(arrays), ConfigRecord(dict(base)), grid))
        down_eval = payload_bytes(eval_msgs)
        eval_replies = list(grid.send_and_receive(eval_msgs, timeout=settings.round_timeout)) if eval_msgs else []
        up_eval = payload_bytes(eval_replies)
        es = screen_eval_replies(eval_replies)
        if es.accepted:
            try:
                strategy.aggregate_evaluate(rnd, es.accepted)
            except Exception as exc:  # noqa: BLE001 - our own statistics below do not depend on it
                log.warning("round %d: strategy.aggregate_evaluate failed: %s", rnd, exc)
        em = [next(iter(m.content.metric_records.values())) for m in es.accepted]
        n_eval = [float(m["num-examples"]) for m in em]
        acc = weighted_stats([float(m["accuracy"]) for m in em], n_eval)
        score = weighted_stats([float(m["score"]) for m in em], n_eval)
        eval_loss = weighted_stats([float(m["eval-loss"]) for m in em], n_eval)["mean"]

        _save_global(out, arrays, rnd, tag)
        _write_json(state_path, {"state-tag": tag, "last-round": rnd, "output_dir": str(out)})
        rec: dict[str, Any] = {
            "round": rnd,
            "label": f"{settings.task} {settings.method} federate={settings.federate} {settings.strategy}",
            "metric": "pass@1" if settings.is_code_task else "accuracy",
            "train_loss": train_loss,
            "acc_mean": acc["mean"],
            "acc_min": acc["min"],
            "acc_max": acc["max"],
            "acc_std": acc["std"],
            "score_mean": score["mean"],
            "eval_loss": eval_loss,
            "per_client": {
                str(int(m["partition-id"])): {"accuracy": float(m["accuracy"]), "num_examples": int(m["num-examples"])}
                for m in em
            },
            "num_train_examples": int(sum(n_train)),
            "num_eval_examples": int(sum(n_eval)),
            "bytes_up": up_train + up_eval,
            "bytes_down": down_train + down_eval,
            "bytes_up_train": up_train,
            "bytes_down_train": down_train,
            "bytes_down_eval": down_eval,
            "sampled": len(msgs),
            "replied": len(screened.accepted),
            "failed": len(screened.failed) + missing,
            "rejected": len(screened.rejected),
            "rejected_reasons": [{"node": n, "reason": r} for n, r in screened.rejected],
            "failed_reasons": [{"node": n, "reason": r} for n, r in screened.failed],
            "eval_replied": len(es.accepted),
            "eval_failed": len(es.failed) + len(es.rejected) + (len(eval_msgs) - len(eval_replies)),
            "global_updated": updated,
            "update_norm": update_norm,
            "model_loads_max": int(max([int(m["model-loads"]) for m in tm + em], default=0)),
            "private_restored": int(sum(int(m["private-restored"]) for m in tm)),
            "seconds": time.time() - t0,
        }
        rounds.append(rec)
        log.info(
            "[lopa-fed] round %d: train loss %s, acc %s (min %s, max %s), up %d B, down %d B, replied %d, failed %d, rejected %d",
            rnd,
            _fmt(train_loss),
            _fmt(acc["mean"]),
            _fmt(acc["min"]),
            _fmt(acc["max"]),
            rec["bytes_up"],
            rec["bytes_down"],
            rec["replied"],
            rec["failed"],
            rec["rejected"],
        )
    info["status"] = "completed"
    _write_json(out / RUN_FILE, info)
    return {"output_dir": str(out), "rounds": rounds.records, "federated": names}


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"
