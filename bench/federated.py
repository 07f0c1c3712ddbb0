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

Two settings (``--setting``): ``classifier`` (default; frozen MiniLM + a shared 2-class head)
and ``causal`` (the paper's setting: frozen SmolLM2-135M-Instruct read through the next-token
verbalizer, no head, MiniLM as LoPA's instance encoder, Zs from vocabulary rows; rows
centralised LoPA, fed LoPA zs, local-only LoPA, fed PT, fed LoRA r=16; at least 50 test examples
per client). Causal budget ``small`` is sized for about 2 hours of CPU on 2 cores at ~5 s per
SmolLM2 step of 16 examples: 10 clients × 5 rounds × 4 local steps (200 client steps per row).

Every finished row is written to the JSON at once; ``--resume`` keeps the finished rows and
runs only the others; ``--rows``/``--alphas``/``--seeds``/``--name`` shard a table and
``--merge`` joins shards.

    .venv/bin/python bench/federated.py --budget small     # 10 clients, α 0.5 and 0.1
    .venv/bin/python bench/federated.py --budget smoke     # 2 clients, 1 round, 2 rows
    .venv/bin/python bench/federated.py --setting causal --budget small --seeds 9876,9877 --resume
"""

from __future__ import annotations

import argparse
import os
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
#: causal setting: bench/quality.py --setting causal's first (init, lr) points on SST-2 (vocab init, 3e-3 for
#: PT and LoPA, 1e-3 for LoRA); override with --lr method=value once its selection has settled.
LR_CAUSAL = {"lopa": 3e-3, "pt": 3e-3, "lora": 1e-3}
CAUSAL_ROWS = ("local majority class", "centralized LoPA", "fed LoPA zs", "local-only LoPA", "fed PT",
               "fed LoRA r=16")
#: rows run with every seed in --seeds; the others with the first seed only (issue 10: 2 seeds for LoPA and PT;
#: the majority-class row takes seconds)
MULTI_SEED_ROWS = ("local majority class", "centralized LoPA", "fed LoPA zs", "local-only LoPA", "fed PT")
CAUSAL_BUDGETS = {
    "smoke": dict(clients=2, rounds=1, local_steps=1, batch=4, pool=40, max_test=4, alphas=(0.5,),
                  rows=("centralized LoPA", "fed LoPA zs", "fed PT", "fed LoRA r=16")),
    # pool 2,500 over 10 equal clients → 250 each, 20 % local test → 50 test examples per client
    "small": dict(clients=10, rounds=5, local_steps=4, batch=16, pool=2500, max_test=50, alphas=(0.5, 0.1),
                  rows=CAUSAL_ROWS),
    "full": dict(clients=10, rounds=10, local_steps=10, batch=16, pool=2500, max_test=50, alphas=(0.5, 0.1),
                 rows=CAUSAL_ROWS),
}
BUDGETS = {
    "smoke": dict(clients=2, rounds=1, local_steps=1, batch=8, pool=64, max_test=8, alphas=(0.5,),
                  rows=("centralized LoPA", "fed LoPA zs")),
    "small": dict(clients=10, rounds=5, local_steps=10, batch=16, pool=1000, max_test=40, alphas=(0.5, 0.1),
                  rows=tuple(ROWS)),
    "full": dict(clients=10, rounds=20, local_steps=10, batch=16, pool=2000, max_test=200, alphas=(0.5, 0.1),
                 rows=tuple(ROWS)),
}


def run_config(b: dict, method: str, federate: str, alpha: float, seed: int) -> dict:
    cfg = {
        "task": "sst2", "method": method, "federate": federate, "partitioner": "inner-dirichlet",
        "alpha": float(alpha),
        "num-server-rounds": b["rounds"], "local-steps": b["local_steps"], "local-epochs": 1,
        "batch-size": b["batch"], "lr": b["lr"][method], "pool-size": b["pool"], "max-test-examples": b["max_test"],
        "min-nodes": b["clients"], "seed": seed, "max-length": 128,
    }
    if b.get("setting") == "causal":
        cfg.update({"model": "smollm2", "zs-init": "vocab"})
    return cfg


def centralized(b: dict, alpha: float, seed: int) -> dict:
    """One LoPA model on the union of the clients' local train sets, same total optimiser steps."""
    from clients.partition import load_local_data
    from lopa_fed import LoPAConfig, TrainConfig, build_model, encode_examples, evaluate, fit, get_task
    from lopa_fed.federation import FedSettings
    from lopa_fed.tasks import resolve_data_dir

    t0 = time.time()
    s = FedSettings.from_run_config(run_config(b, "lopa", "zs", alpha, seed))
    data_dir = str(resolve_data_dir(None) or "")
    task = get_task("sst2")
    if b.get("setting") == "causal":
        model = build_model(task, LoPAConfig(method="lopa", m=10, r=4, zs_init="vocab"), model="smollm2",
                            kind="causal", seed=seed)
    else:
        model = build_model(task, LoPAConfig(method="lopa", m=10, r=4), seed=seed)
    parts = [load_local_data(s, i, b["clients"], data_dir) for i in range(b["clients"])]
    train = encode_examples([e for p in parts for e in p.train], task, model.frozen, 128)
    steps = b["rounds"] * b["clients"] * b["local_steps"]
    fit(model, train, TrainConfig(lr=b["lr"]["lopa"], epochs=10_000, max_steps=steps, batch_size=b["batch"], seed=seed))
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
    from lopa_fed.federation import FedSettings
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
    ap.add_argument("--setting", choices=("classifier", "causal"), default="classifier",
                    help="classifier: MiniLM + head; causal: SmolLM2-135M next-token verbalizer (the paper's setting)")
    ap.add_argument("--budget", choices=tuple(BUDGETS), default="small")
    ap.add_argument("--rows", default=None, help="comma-separated subset of: " + ", ".join(ROWS))
    ap.add_argument("--alphas", default=None, help="comma-separated Dirichlet alphas")
    ap.add_argument("--seed", type=int, default=9876)
    ap.add_argument("--seeds", default=None,
                    help="comma-separated seeds (default: --seed); rows in MULTI_SEED_ROWS run with each, "
                         "the others with the first")
    ap.add_argument("--lr", action="append", default=[], metavar="METHOD=LR", help="override a method's lr")
    ap.add_argument("--timeout", type=float, default=3600.0, help="per simulated run")
    ap.add_argument("--work-dir", default=str(common.ROOT / "runs" / "bench-federated"))
    ap.add_argument("--out-dir", default=str(common.RESULTS))
    ap.add_argument("--name", default=None)
    ap.add_argument("--resume", action="store_true",
                    help="keep the finished rows of an earlier result file of the same name; run only the others")
    ap.add_argument("--merge", nargs="*", default=[], metavar="JSON", help="also keep finished rows of these files")
    args = ap.parse_args(argv)
    causal = args.setting == "causal"
    budgets = CAUSAL_BUDGETS if causal else BUDGETS
    if args.budget not in budgets:
        ap.error(f"--budget {args.budget}: choose one of {', '.join(budgets)} for --setting {args.setting}")
    b = dict(budgets[args.budget], setting=args.setting)
    b["lr"] = dict(LR_CAUSAL if causal else LR)
    for kv in args.lr:
        k, _, v = kv.partition("=")
        b["lr"][k] = float(v)
    rows = tuple(args.rows.split(",")) if args.rows else b["rows"]
    alphas = tuple(float(a) for a in args.alphas.split(",")) if args.alphas else b["alphas"]
    seeds = tuple(int(x) for x in args.seeds.split(",")) if args.seeds else (args.seed,)
    name = args.name or (f"federated-causal-{args.budget}" if causal else f"federated-{args.budget}")
    out = Path(args.out_dir)
    load0 = common.start_load()
    meta = common.metadata(seeds=list(seeds))
    results: list[dict] = []
    import json

    sources = [Path(f) for f in args.merge]
    if args.resume and (out / f"{name}.json").is_file():
        sources.insert(0, out / f"{name}.json")
    for src in sources:
        old = json.loads(src.read_text())
        results += [r | {"seed": r.get("seed", old.get("meta", {}).get("seeds", [args.seed])[0])}
                    for r in old.get("results", []) if r["status"] == "ok"]
        common.record_source(meta, src, old, name)
    done = {(r["alpha"], r["row"], r["seed"]) for r in results}
    model = "SmolLM2-135M-Instruct (causal verbalizer), MiniLM instance encoder" if causal else "all-MiniLM-L6-v2"
    # the setup describes every kept row, not only this invocation's share
    kept_alphas = sorted({*alphas, *(r["alpha"] for r in results)}, reverse=True)
    kept_seeds = [*seeds, *sorted({r["seed"] for r in results} - set(seeds))]
    kept_rows = [row for row in ROWS if row in rows or any(r["row"] == row for r in results)]
    data = {"meta": meta, "setup": {**b, "rows": kept_rows, "alphas": kept_alphas, "seeds": kept_seeds, "task": "sst2",
                                    "partitioner": "inner-dirichlet", "model": model, "m": 10, "r": 4,
                                    "zs_init": "vocab" if causal else "normal", "cpus_per_client": 1.0},
            "results": results}
    plan = [(a, row, sd) for a in alphas for row in rows for sd in (seeds if row in MULTI_SEED_ROWS else seeds[:1])]
    with common.progress() as bar:
        t = bar.add_task("federated", total=len(plan))
        for alpha, row, seed in plan:
            method, federate = ROWS[row]
            bar.update(t, description=f"α={alpha} {row} seed {seed}")
            if (alpha, row, seed) in done:
                bar.advance(t)
                continue
            try:
                if federate == "majority":
                    r = majority(b, alpha, seed)
                elif federate == "central":
                    r = centralized(b, alpha, seed)
                else:
                    wd = Path(args.work_dir) / f"{args.setting}-a{alpha}-{method}-{federate}-s{seed}"
                    r = federated(b, method, federate, alpha, seed, wd, args.timeout)
                r["status"] = "ok"
            except Exception as exc:  # noqa: BLE001 - record and go on with the other rows
                r = {"status": "error", "error": f"{type(exc).__name__}: {exc}"[:2000]}
            results.append({"row": row, "alpha": alpha, "seed": seed, "method": method, "federate": federate, **r})
            data["results"] = results
            common.write_json(name, data, out)
            bar.advance(t)
    load1 = common.load_average()
    meta["machine"]["load_average_end"] = load1
    meta["contention"] = common.contention_note(load0, load1, own=os.cpu_count())  # Ray workers
    data["gaps"] = gaps(results)
    common.write_json(name, data, out)
    print(render(data))
    plot(data, out, name)
    return data


def gaps(results: list[dict]) -> dict:
    """Per α, mean over seeds: fed LoPA zs against centralised, local-only, fed PT and fed LoRA (mean, worst client)."""
    out: dict = {}
    for a in sorted({r["alpha"] for r in results}, reverse=True):
        def agg(row, key, a=a):
            xs = [100 * r[key] for r in results if r["alpha"] == a and r["row"] == row and r["status"] == "ok"]
            return sum(xs) / len(xs) if xs else None

        fed = agg("fed LoPA zs", "acc_mean"), agg("fed LoPA zs", "acc_min")
        g = {}
        for other in ("centralized LoPA", "local-only LoPA", "fed PT", "fed LoRA r=16", "local majority class"):
            o = agg(other, "acc_mean"), agg(other, "acc_min")
            if fed[0] is not None and o[0] is not None:
                g[f"fed LoPA zs - {other}"] = {"mean": round(fed[0] - o[0], 2),
                                               "worst client": round(fed[1] - o[1], 2)}
        out[str(a)] = g
    return out


def render(data: dict) -> str:
    rows = []
    order = list(ROWS)
    for r in sorted(data["results"], key=lambda r: (-r["alpha"], order.index(r["row"]) if r["row"] in order else 99,
                                                    r.get("seed", 0))):
        if r["status"] != "ok":
            rows.append((r["alpha"], r["row"], r.get("seed", ""), "error: " + r["error"][:80], "", "", "", "", ""))
            continue
        rows.append((r["alpha"], r["row"], r.get("seed", ""), f"{100 * r['acc_mean']:.1f}", f"{100 * r['acc_min']:.1f}",
                     r["rounds_to_95"] if r["rounds_to_95"] is not None else "-",
                     f"{common.human_bytes(r['bytes_up_per_client_round'])} / {common.human_bytes(r['bytes_down_per_client_round'])}",
                     common.human_bytes(r["bytes_total"]), f"{r['wall_seconds']:.0f}"))
    b = data["setup"]
    model = b.get("model", "all-MiniLM-L6-v2")
    head = (f"{model}; SST-2, {b['clients']} clients of equal size, label mix ~ Dir(α) (inner-dirichlet), {b['rounds']} rounds × {b['local_steps']} local steps "
            f"(batch {b['batch']}), pool {b['pool']}; personalised accuracy on each client's local test split")
    note = f"\nNote: {data['meta']['contention']}" if data["meta"].get("contention") else ""
    grows = [(a, k, v["mean"], v["worst client"]) for a, g in data.get("gaps", {}).items() for k, v in g.items()]
    gap = ("\n\nGaps (points, mean over seeds):\n" + common.markdown_table(
        ["α", "comparison", "mean client", "worst client"], grows)) if grows else ""
    return head + "\n" + common.markdown_table(
        ["α", "row", "seed", "acc mean %", "acc worst client %", "rounds to 95%", "bytes up / down per client-round",
         "bytes total", "wall s"], rows) + gap + note


def plot(data: dict, out: Path, name: str) -> None:
    plt = common.plt()
    alphas = sorted(dict.fromkeys(r["alpha"] for r in data["results"]), reverse=True)
    fig, axes = plt.subplots(1, len(alphas), figsize=(6 * len(alphas), 4), squeeze=False)
    seeds = sorted({r.get("seed", 0) for r in data["results"]})
    color = {row: f"C{i}" for i, row in enumerate(ROWS)}  # one colour per row; later seeds dashed, fainter
    for ax, a in zip(axes[0], alphas):
        for r in data["results"]:
            if r["alpha"] != a or r["status"] != "ok":
                continue
            ys = [100 * x for x in r["per_round_acc"]]
            later = seeds.index(r.get("seed", 0)) > 0
            label = f"{r['row']} s{r.get('seed', '')}"
            if r["federate"] in ("central", "majority"):
                ax.axhline(ys[-1], ls="--" if r["federate"] == "central" else ":", color=color.get(r["row"], "k"),
                           alpha=0.5 if later else 1.0, label=label)
            else:
                ax.plot(range(1, len(ys) + 1), ys, marker="s" if later else "o", ls="--" if later else "-",
                        alpha=0.6 if later else 1.0, color=color.get(r["row"]), label=label)
        ax.set_xlabel("round")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_ylabel("personalised accuracy % (mean over clients)")
        ax.set_title(f"SST-2, Dirichlet α={a}")
        ax.legend(fontsize=7)
    common.save_fig(fig, name, out)


if __name__ == "__main__":
    main()
