"""Federated personalisation on SST-2: Dirichlet label skew over 10 clients, every federate mode.

Clients have equal sizes and a label mix drawn from Dir(α) (flwr-datasets
``InnerDirichletPartitioner``; the size-varying ``DirichletPartitioner`` cannot give 10
clients of a 2-class pool 2+ examples each at α = 0.1). The "local majority class" row
(every client predicts its own most frequent training label) shows how much of a
personalised accuracy the label skew alone explains.

Each row is a real Flower run (``server.launch.simulate``: our own SuperLink in simulation
mode, Ray workers, the ``clients.app``/``server.app`` apps), except the centralised row,
which trains one LoPA model in this process on the union of the same clients' local
train sets for the same number of optimiser steps and evaluates it on every client's
local test split.

Rows (for each Dirichlet α): centralised LoPA; federated LoPA with federate = zs,
zs+heads and all; local-only LoPA (federate = none); federated PT; federated LoRA.
Per row: personalised accuracy (example-weighted mean and worst client, last round),
rounds to reach 95 % of the final mean accuracy, bytes up/down per client-round
(train + evaluate messages) and in total, and wall time.

    .venv/bin/python bench/federated.py --budget small     # 10 clients, α 0.5 and 0.1
    .venv/bin/python bench/federated.py --budget smoke     # 2 clients, 1 round, 2 rows
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common  # noqa: E402

ROWS = {  # name: (method, federate) ; "central" is trained in-process, "majority" needs no training
    "local majority class": ("-", "majority"),
    "centralized LoPA": ("lopa", "central"),
    "fed LoPA zs": ("lopa", "zs"),
    "fed LoPA zs+heads": ("lopa", "zs+heads"),
    "fed LoPA all": ("lopa", "all"),
    "local-only LoPA": ("lopa", "none"),
    "fed PT": ("pt", "zs"),
    "fed LoRA r=16": ("lora", "zs"),
}
LR = {"lopa": 3e-3, "pt": 1e-2, "lora": 1e-3}  # the small-budget choices of bench/quality.py on SST-2
BUDGETS = {
    "smoke": dict(clients=2, rounds=1, local_steps=1, batch=8, pool=64, max_test=8, alphas=(0.5,),
                  rows=("centralized LoPA", "fed LoPA zs")),
    "small": dict(clients=10, rounds=5, local_steps=10, batch=16, pool=1000, max_test=40, alphas=(0.5, 0.1),
                  rows=tuple(ROWS)),
    "full": dict(clients=10, rounds=20, local_steps=10, batch=16, pool=2000, max_test=200, alphas=(0.5, 0.1),
                 rows=tuple(ROWS)),
}


def run_config(b: dict, method: str, federate: str, alpha: float, seed: int) -> dict:
    return {
        "task": "sst2", "method": method, "federate": federate, "partitioner": "inner-dirichlet",
        "alpha": float(alpha),
        "num-server-rounds": b["rounds"], "local-steps": b["local_steps"], "local-epochs": 1,
        "batch-size": b["batch"], "lr": LR[method], "pool-size": b["pool"], "max-test-examples": b["max_test"],
        "min-nodes": b["clients"], "seed": seed, "max-length": 128,
    }


def centralized(b: dict, alpha: float, seed: int) -> dict:
    """One LoPA model on the union of the clients' local train sets, same total optimiser steps."""
    from clients.partition import load_local_data
    from clients.settings import FedSettings
    from lopa_fed import LoPAConfig, TrainConfig, build_model, encode_examples, evaluate, fit, get_task
    from lopa_fed.tasks import resolve_data_dir

    t0 = time.time()
    s = FedSettings.from_run_config(run_config(b, "lopa", "zs", alpha, seed))
    data_dir = str(resolve_data_dir(None) or "")
    task = get_task("sst2")
    model = build_model(task, LoPAConfig(method="lopa", m=10, r=4), seed=seed)
    parts = [load_local_data(s, i, b["clients"], data_dir) for i in range(b["clients"])]
    train = encode_examples([e for p in parts for e in p.train], task, model.frozen, 128)
    steps = b["rounds"] * b["clients"] * b["local_steps"]
    fit(model, train, TrainConfig(lr=LR["lopa"], epochs=10_000, max_steps=steps, batch_size=b["batch"], seed=seed))
    accs, ns = [], []
    for p in parts:
        test = encode_examples(list(p.test), task, model.frozen, 128)
        accs.append(evaluate(model, test)["accuracy"])
        ns.append(len(test))
    mean = sum(a * n for a, n in zip(accs, ns)) / sum(ns)
    return {"acc_mean": mean, "acc_min": min(accs), "per_round_acc": [mean], "rounds_to_95": None,
            "bytes_up_per_client_round": 0, "bytes_down_per_client_round": 0, "bytes_total": 0,
            "wall_seconds": time.time() - t0, "optimizer_steps": steps, "per_client": accs}


def majority(b: dict, alpha: float, seed: int) -> dict:
    """Reference row: each client predicts the most frequent label of its own local train split."""
    from collections import Counter

    from clients.partition import load_local_data
    from clients.settings import FedSettings
    from lopa_fed.tasks import resolve_data_dir

    t0 = time.time()
    s = FedSettings.from_run_config(run_config(b, "lopa", "zs", alpha, seed))
    data_dir = str(resolve_data_dir(None) or "")
    accs, ns = [], []
    for i in range(b["clients"]):
        p = load_local_data(s, i, b["clients"], data_dir)
        label = Counter(e.label for e in p.train).most_common(1)[0][0]
        accs.append(sum(e.label == label for e in p.test) / len(p.test))
        ns.append(len(p.test))
    mean = sum(a * n for a, n in zip(accs, ns)) / sum(ns)
    return {"acc_mean": mean, "acc_min": min(accs), "per_round_acc": [mean], "rounds_to_95": None,
            "bytes_up_per_client_round": 0, "bytes_down_per_client_round": 0, "bytes_total": 0,
            "wall_seconds": time.time() - t0, "per_client": accs}


def federated(b: dict, method: str, federate: str, alpha: float, seed: int, out_dir: Path, timeout: float) -> dict:
    from server.launch import simulate

    if out_dir.exists():
        shutil.rmtree(out_dir)
    cfg = run_config(b, method, federate, alpha, seed)
    t0 = time.time()
    res = simulate(cfg, out_dir, num_clients=b["clients"], cpus_per_client=1.0, timeout=timeout)
    wall = time.time() - t0
    rounds = res.rounds
    if not rounds:
        log = res.logs.get("flwr-run")
        tail = Path(log).read_text()[-1500:] if log and Path(log).is_file() else ""
        raise RuntimeError(f"{method}/{federate}: no rounds recorded (rc {res.returncode}); log tail:\n{tail}")
    accs = [r["acc_mean"] for r in rounds]
    final = accs[-1]
    to95 = next((r["round"] for r in rounds if r["acc_mean"] is not None and r["acc_mean"] >= 0.95 * final), None)
    cr = [max(r["sampled"], 1) for r in rounds]
    up = sum(r["bytes_up"] for r in rounds)
    down = sum(r["bytes_down"] for r in rounds)
    return {"acc_mean": final, "acc_min": rounds[-1]["acc_min"], "per_round_acc": accs, "rounds_to_95": to95,
            "bytes_up_per_client_round": up / sum(cr), "bytes_down_per_client_round": down / sum(cr),
            "bytes_total": up + down, "wall_seconds": wall, "returncode": res.returncode,
            "model_loads_max": max(r.get("model_loads_max", 0) for r in rounds),
            "seconds_per_round": [r["seconds"] for r in rounds], "out_dir": str(out_dir)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", choices=tuple(BUDGETS), default="small")
    ap.add_argument("--rows", default=None, help="comma-separated subset of: " + ", ".join(ROWS))
    ap.add_argument("--alphas", default=None, help="comma-separated Dirichlet alphas")
    ap.add_argument("--seed", type=int, default=9876)
    ap.add_argument("--timeout", type=float, default=3600.0, help="per simulated run")
    ap.add_argument("--work-dir", default=str(common.ROOT / "runs" / "bench-federated"))
    ap.add_argument("--out-dir", default=str(common.RESULTS))
    ap.add_argument("--name", default=None)
    ap.add_argument("--resume", action="store_true",
                    help="keep the finished rows of an earlier result file of the same name; run only the others")
    args = ap.parse_args(argv)
    b = dict(BUDGETS[args.budget])
    rows = tuple(args.rows.split(",")) if args.rows else b["rows"]
    alphas = tuple(float(a) for a in args.alphas.split(",")) if args.alphas else b["alphas"]
    name = args.name or f"federated-{args.budget}"
    out = Path(args.out_dir)
    load0 = common.load_average()
    meta = common.metadata(seeds=[args.seed])
    results: list[dict] = []
    if args.resume and (out / f"{name}.json").is_file():
        import json

        results = [r for r in json.loads((out / f"{name}.json").read_text()).get("results", []) if r["status"] == "ok"]
    done = {(r["alpha"], r["row"]) for r in results}
    data = {"meta": meta, "setup": {**b, "rows": rows, "alphas": alphas, "lr": LR, "task": "sst2",
                                    "partitioner": "inner-dirichlet",
                                    "model": "all-MiniLM-L6-v2", "m": 10, "r": 4, "cpus_per_client": 1.0}}
    with common.progress() as bar:
        t = bar.add_task("federated", total=len(rows) * len(alphas))
        for alpha in alphas:
            for row in rows:
                method, federate = ROWS[row]
                bar.update(t, description=f"α={alpha} {row}")
                if (alpha, row) in done:
                    bar.advance(t)
                    continue
                try:
                    if federate == "majority":
                        r = majority(b, alpha, args.seed)
                    elif federate == "central":
                        r = centralized(b, alpha, args.seed)
                    else:
                        wd = Path(args.work_dir) / f"a{alpha}-{method}-{federate}"
                        r = federated(b, method, federate, alpha, args.seed, wd, args.timeout)
                    r["status"] = "ok"
                except Exception as exc:  # noqa: BLE001 - record and go on with the other rows
                    r = {"status": "error", "error": f"{type(exc).__name__}: {exc}"[:2000]}
                results.append({"row": row, "alpha": alpha, "method": method, "federate": federate, **r})
                data["results"] = results
                common.write_json(name, data, out)
                bar.advance(t)
    load1 = common.load_average()
    meta["machine"]["load_average_end"] = load1
    meta["contention"] = common.contention_note(load0, load1)
    common.write_json(name, data, out)
    print(render(data))
    plot(data, out, name)
    return data


def render(data: dict) -> str:
    rows = []
    order = list(ROWS)
    for r in sorted(data["results"], key=lambda r: (-r["alpha"], order.index(r["row"]) if r["row"] in order else 99)):
        if r["status"] != "ok":
            rows.append((r["alpha"], r["row"], "error: " + r["error"][:80], "", "", "", "", ""))
            continue
        rows.append((r["alpha"], r["row"], f"{100 * r['acc_mean']:.1f}", f"{100 * r['acc_min']:.1f}",
                     r["rounds_to_95"] if r["rounds_to_95"] is not None else "-",
                     f"{common.human_bytes(r['bytes_up_per_client_round'])} / {common.human_bytes(r['bytes_down_per_client_round'])}",
                     common.human_bytes(r["bytes_total"]), f"{r['wall_seconds']:.0f}"))
    b = data["setup"]
    head = (f"SST-2, {b['clients']} clients of equal size, label mix ~ Dir(α) (inner-dirichlet), {b['rounds']} rounds × {b['local_steps']} local steps "
            f"(batch {b['batch']}), pool {b['pool']}; personalised accuracy on each client's local test split")
    note = f"\nNote: {data['meta']['contention']}" if data["meta"].get("contention") else ""
    return head + "\n" + common.markdown_table(
        ["α", "row", "acc mean %", "acc worst client %", "rounds to 95%", "bytes up / down per client-round",
         "bytes total", "wall s"], rows) + note


def plot(data: dict, out: Path, name: str) -> None:
    plt = common.plt()
    alphas = sorted(dict.fromkeys(r["alpha"] for r in data["results"]), reverse=True)
    fig, axes = plt.subplots(1, len(alphas), figsize=(6 * len(alphas), 4), squeeze=False)
    for ax, a in zip(axes[0], alphas):
        for r in data["results"]:
            if r["alpha"] != a or r["status"] != "ok":
                continue
            ys = [100 * x for x in r["per_round_acc"]]
            if r["federate"] in ("central", "majority"):
                ax.axhline(ys[-1], ls="--" if r["federate"] == "central" else ":", color="k", label=r["row"])
            else:
                ax.plot(range(1, len(ys) + 1), ys, marker="o", label=r["row"])
        ax.set_xlabel("round")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_ylabel("personalised accuracy % (mean over clients)")
        ax.set_title(f"SST-2, Dirichlet α={a}")
        ax.legend(fontsize=7)
    common.save_fig(fig, name, out)


if __name__ == "__main__":
    main()
