"""What SecAgg+ adds per round: bytes and seconds, plain FedAvg against ``secagg = true``.

Each row is a real Flower simulation (``server.launch.simulate``) of LoPA on SST-2 with the
default MiniLM, ``federate = zs`` (Zs + the classifier head: 4,610 float32 values), the same
seed, partitions and local training, once on the normal path and once with SecAgg+. Per row:

* seconds per round (median over rounds 2.., so the first round's model loading is left out),
  and for SecAgg+ the seconds of its four stages;
* bytes per client-round of the training exchange. Plain: the array payload of the train
  message and reply (``rounds.json``: ``bytes_down_train`` / ``bytes_up_train``) and their
  serialized size (the same records built and measured with ``recorddict_to_proto``).
  SecAgg+: the serialized size of every message of the four stages (setup, share keys,
  collect masked vectors, unmask), from ``rounds.json`` ``secagg``;
* the final personalised accuracy and the aggregate's quantization error bound.

Every finished row is written to ``bench/results/secagg.json`` at once; ``--resume`` keeps the
finished rows. Run it under the machine-wide lock::

    flock /work/heavy.lock nice -n 10 .venv/bin/python bench/secagg.py --clients 3,5 --resume
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

NAME = "secagg"
BASE = {
    "num-server-rounds": 3,
    "local-steps": 2,
    "batch-size": 8,
    "pool-size": 300,
    "max-test-examples": 16,
    "round-timeout": 300.0,
    "seed": 9876,
}


def plain_wire_bytes(out: Path) -> dict[str, int]:
    """Serialized size of one plain train message and its reply, rebuilt from the run's globals."""
    from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
    from flwr.common import serde

    from lopa_fed.checkpoint import load_tensors
    from lopa_fed.federation import ARRAYS_KEY, CONFIG_KEY, METRICS_KEY, TRAIN_METRIC_KEYS

    arrays = ArrayRecord({k: Array(v.numpy()) for k, v in load_tensors(out / "global" / "round-001.safetensors").items()})
    config = ConfigRecord({"state-tag": "0" * 32, "private-dir": str(out / "private"), "data-dir": "/data",
                           "server-round": 1})
    down = RecordDict({ARRAYS_KEY: arrays, CONFIG_KEY: config})
    up = RecordDict({ARRAYS_KEY: arrays, METRICS_KEY: MetricRecord({k: 1.0 for k in TRAIN_METRIC_KEYS})})
    size = serde.recorddict_to_proto
    return {"down": int(size(down).ByteSize()), "up": int(size(up).ByteSize())}


def run_row(clients: int, secagg: bool, work: Path) -> dict[str, Any]:
    """One simulation; returns its row."""
    from server.launch import simulate

    out = work / f"{'secagg' if secagg else 'plain'}-{clients}"
    if out.exists():
        shutil.rmtree(out)
    cfg = dict(BASE, **{"min-nodes": clients, "secagg": secagg})
    with common.Timer() as t:
        res = simulate(cfg, out, num_clients=clients, timeout=3600)
    if not res.completed:
        raise RuntimeError(f"row {clients} secagg={secagg} did not complete: {res.error}")
    rounds = json.loads((out / "rounds.json").read_text())
    later = rounds[1:] or rounds
    row: dict[str, Any] = {
        "clients": clients, "secagg": secagg, "rounds": len(rounds), "wall_seconds": round(t.seconds, 1),
        "round_seconds": round(statistics.median(r["seconds"] for r in later), 3),
        "round_seconds_all": [round(r["seconds"], 3) for r in rounds],
        "acc_mean": rounds[-1]["acc_mean"],
        "acc_min": rounds[-1]["acc_min"],
    }
    if secagg:
        row["train_bytes_down_per_client"] = int(statistics.median(r["secagg"]["bytes_down"] for r in later) / clients)
        row["train_bytes_up_per_client"] = int(statistics.median(r["secagg"]["bytes_up"] for r in later) / clients)
        row["secagg_seconds"] = round(statistics.median(r["secagg"]["seconds"] for r in later), 3)
        row["stages"] = {
            s["stage"]: {k: statistics.median(x[k] for x in (
                next(st for st in r["secagg"]["stages"] if st["stage"] == s["stage"]) for r in later))
                for k in ("seconds", "bytes_down", "bytes_up")}
            for s in later[0]["secagg"]["stages"]
        }
        row["error_bound"] = max(r["secagg"]["error_bound"] for r in rounds)
        row["bytes_measure"] = "serialized RecordDict, all four SecAgg+ stages"
    else:
        wire = plain_wire_bytes(out)
        row["payload_bytes_down_per_client"] = int(statistics.median(r["bytes_down_train"] for r in later) / clients)
        row["payload_bytes_up_per_client"] = int(statistics.median(r["bytes_up_train"] for r in later) / clients)
        row["train_bytes_down_per_client"] = wire["down"]
        row["train_bytes_up_per_client"] = wire["up"]
        row["bytes_measure"] = "serialized RecordDict of the train message and reply"
    return row


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: per client count, plain vs SecAgg+ and what SecAgg+ adds."""
    out = []
    for n in sorted({r["clients"] for r in rows}):
        p = next((r for r in rows if r["clients"] == n and not r["secagg"]), None)
        s = next((r for r in rows if r["clients"] == n and r["secagg"]), None)
        if p is None or s is None:
            continue
        out.append([
            n, f"{p['round_seconds']:.2f}", f"{s['round_seconds']:.2f}", f"{s['round_seconds'] - p['round_seconds']:+.2f}",
            f"{p['train_bytes_up_per_client']:,} / {p['train_bytes_down_per_client']:,}",
            f"{s['train_bytes_up_per_client']:,} / {s['train_bytes_down_per_client']:,}",
            f"{s['train_bytes_up_per_client'] / p['train_bytes_up_per_client']:.2f}× / "
            f"{s['train_bytes_down_per_client'] / p['train_bytes_down_per_client']:.2f}×",
            f"{s['error_bound']:.1e}", f"{p['acc_mean']:.3f} / {s['acc_mean']:.3f}",
        ])
    return common.markdown_table(
        ["clients", "s/round plain", "s/round SecAgg+", "added s", "B up/down per client plain",
         "B up/down per client SecAgg+", "SecAgg+/plain", "error bound", "acc plain / SecAgg+"], out)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", default="3,5", help="comma-separated client counts (default: 3,5)")
    ap.add_argument("--resume", action="store_true", help="keep the finished rows of bench/results/secagg.json")
    ap.add_argument("--work", default=str(common.ROOT / "runs" / "bench-secagg"), help="run directories")
    args = ap.parse_args(argv)
    path = common.RESULTS / f"{NAME}.json"
    data: dict[str, Any] = {"rows": []}
    if args.resume and path.is_file():
        data = json.loads(path.read_text())
    start_load = common.start_load()
    work = Path(args.work)
    for n in [int(x) for x in args.clients.split(",")]:
        for secagg in (False, True):
            if any(r["clients"] == n and r["secagg"] == secagg for r in data["rows"]):
                continue
            row = run_row(n, secagg, work)
            row["load_average_after"] = common.load_average()
            data["rows"].append(row)
            data["metadata"] = common.metadata(seeds=[BASE["seed"]], settings=BASE,
                                               note=common.contention_note(start_load, common.load_average()))
            common.write_json(NAME, data)
            print(json.dumps(row), flush=True)
    data["table"] = table(data["rows"])
    common.write_json(NAME, data)
    print(data["table"])
    return data


if __name__ == "__main__":
    main()
