"""Heterogeneous devices in one federation (issue 15): encoder tiers and ranks that share one Zs.

Setup: SST-2, 10 clients of equal size with a label mix ~ Dir(0.5) (``inner-dirichlet``), the
MiniLM default (classifier) setting: frozen all-MiniLM-L6-v2 with a shared 2-class head, LoPA
with m = 10. Every row is a real Flower run (``server.launch.simulate``) on the same partitions
and local test splits, so a client's accuracy can be compared across rows. Tiers
(:mod:`lopa_fed.tiers`): ``minilm`` (MiniLM-L6, r = 4), ``minilm-l3`` (its first 3 layers, r = 1),
``static`` (the frozen model's token embeddings, mean-pooled, no transformer; r = 1).

Rows:

* ``all full``      — 10 × minilm:r=4
* ``all minilm-l3`` — 10 × minilm-l3:r=1
* ``all smallest``  — 10 × static:r=1
* ``mixed``         — partitions 0–3 minilm:r=4, 4–6 minilm-l3:r=1, 7–9 static:r=1
* ``local-only <tier>`` — federate = none, every client on that tier (no communication)

Reported per row and tier: personalised accuracy (example-weighted mean and worst client,
last round) of the clients that run that tier *in the mixed fleet* (partitions 0–3, 4–6,
7–9), so every comparison is between the same clients; bytes per train reply (must be
identical across tiers). Per tier: encoder latency at batch 1 (PyTorch, 1 thread, median
over SST-2 dev sentences), ONNX size and onnxruntime batch-1 latency of the exported prompt
generator of one mixed-fleet client of that tier (``export_run``: ``lopa-fed export --run DIR
--partition I``, which picks that client's tier).

Targets (issue 15): in the mixed fleet the small-tier clients beat the same clients in the
all-small federation; the full-tier clients lose at most 1 point against all-full.

Every finished row is written to ``bench/results/<name>.json`` at once; ``--resume`` keeps
finished rows. Run it through the machine-wide lock::

    flock /work/heavy.lock nice -n 10 .venv/bin/python bench/hetero.py --budget small --resume
    .venv/bin/python bench/hetero.py --budget smoke      # 2 clients, 1 round
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common  # noqa: E402

MIXED = "minilm:r=4:n=4,minilm-l3:r=1:n=3,static:r=1:n=3"
#: tier label → partitions that run it in the mixed fleet (for a 10-client budget)
GROUPS = {"minilm:r=4": range(0, 4), "minilm-l3:r=1": range(4, 7), "static:r=1": range(7, 10)}
ROWS = {  # name: (tiers spec with {n} = clients, federate); run in this order (the targets' rows first)
    "mixed": (MIXED, "zs"),
    "all full": ("minilm:r=4:n={n}", "zs"),
    "all smallest": ("static:r=1:n={n}", "zs"),
    "local-only minilm:r=4": ("minilm:r=4:n={n}", "none"),
    "local-only minilm-l3:r=1": ("minilm-l3:r=1:n={n}", "none"),
    "local-only static:r=1": ("static:r=1:n={n}", "none"),
    "all minilm-l3": ("minilm-l3:r=1:n={n}", "zs"),
}
BUDGETS = {
    "smoke": dict(clients=2, rounds=1, local_steps=1, batch=8, pool=64, max_test=8, rows=("all full", "mixed")),
    # pool 2000 over 10 equal clients → 200 each, 20 % local test → 40 test examples per client
    "small": dict(clients=10, rounds=8, local_steps=10, batch=16, pool=2000, max_test=40, rows=tuple(ROWS)),
}
LR = 3e-3  # bench/federated.py's LoPA lr on SST-2 (small budget)


def run_config(b: dict, row: str, seed: int) -> dict:
    spec, federate = ROWS[row]
    tiers = spec.format(n=b["clients"])
    if b["clients"] != 10 and row == "mixed":
        tiers = "minilm:r=4:n=1,static:r=1:n=1"
    return {
        "task": "sst2", "method": "lopa", "federate": federate, "partitioner": "inner-dirichlet", "alpha": 0.5,
        "num-server-rounds": b["rounds"], "local-steps": b["local_steps"], "local-epochs": 1,
        "batch-size": b["batch"], "lr": LR, "pool-size": b["pool"], "max-test-examples": b["max_test"],
        "min-nodes": b["clients"], "seed": seed, "max-length": 128, "tiers": tiers,
    }


def groups_of(b: dict) -> dict[str, list[int]]:
    """Mixed-fleet tier label → partitions (the clients every row's figures are grouped by)."""
    if b["clients"] == 10:
        return {k: list(v) for k, v in GROUPS.items()}
    return {"minilm:r=4": [0], "static:r=1": [1]}


def federated_row(b: dict, row: str, seed: int, out_dir: Path, timeout: float) -> dict:
    import json

    from server.launch import simulate

    if out_dir.exists():
        shutil.rmtree(out_dir)
    cfg = run_config(b, row, seed)
    cfg["audit-log"] = str(out_dir.parent / f"{out_dir.name}-audit.jsonl")
    Path(cfg["audit-log"]).unlink(missing_ok=True)
    t0 = time.time()
    res = simulate(cfg, out_dir, num_clients=b["clients"], cpus_per_client=1.0, timeout=timeout)
    wall = time.time() - t0
    if not res.rounds or not res.completed:
        log = res.logs.get("flwr-run")
        tail = Path(log).read_text()[-1500:] if log and Path(log).is_file() else ""
        raise RuntimeError(f"{row}: run did not complete (rc {res.returncode}); log tail:\n{tail}")
    last = res.rounds[-1]
    per_client = {int(k): v for k, v in last["per_client"].items()}
    audit = [json.loads(x) for x in Path(cfg["audit-log"]).read_text().splitlines()]
    reply_bytes = {}
    for a in audit:
        if a["type"] == "train":
            reply_bytes.setdefault(int(a["partition"]), set()).add(sum(v["bytes"] for v in a["arrays"].values()))
    out = {"groups": {}, "wall_seconds": wall, "out_dir": str(out_dir), "rounds": len(res.rounds),
           "per_round_acc": [r["acc_mean"] for r in res.rounds], "acc_mean_all": last["acc_mean"],
           "per_client": {str(k): v for k, v in sorted(per_client.items())},
           "per_tier_last": last.get("per_tier", {}),
           "bytes_up_train_per_round": [r["bytes_up_train"] for r in res.rounds],
           "reply_bytes_by_partition": {str(k): sorted(v) for k, v in sorted(reply_bytes.items())},
           "rejected": sum(r["rejected"] for r in res.rounds), "failed": sum(r["failed"] for r in res.rounds)}
    for label, pids in groups_of(b).items():
        accs = [per_client[p]["accuracy"] for p in pids]
        ns = [per_client[p]["num_examples"] for p in pids]
        tiers_run = sorted({per_client[p].get("tier", "?") for p in pids})
        out["groups"][label] = {"acc_mean": sum(a * n for a, n in zip(accs, ns)) / sum(ns), "acc_min": min(accs),
                                "ran": tiers_run, "partitions": pids,
                                "reply_bytes": sorted({x for p in pids for x in reply_bytes.get(p, ())})}
    return out


def tier_costs(b: dict, mixed_dir: Path, work: Path, seed: int) -> dict:
    """Per tier: PyTorch encoder latency at batch 1, ONNX size and onnxruntime batch-1 latency of one client."""
    import torch

    from export.pipeline import export_run
    from export.runtime import FP32_FILE, PromptRuntime
    from lopa_fed.backbone import FrozenModel
    from lopa_fed.tasks import get_task
    from lopa_fed.tiers import load_encoder

    torch.set_num_threads(1)
    texts = [e.text_a for e in get_task("sst2").read("dev", limit=40, seed=seed)]  # real SST-2 dev sentences
    frozen = FrozenModel.load("default")
    out = {}
    for label, pids in groups_of(b).items():
        name = label.split(":")[0]
        enc = load_encoder(name, frozen)
        params = sum(p.numel() for p in enc.net.parameters())
        ts = []
        with torch.no_grad():
            for t in texts:
                x = enc.tokenize([t])
                t0 = time.perf_counter()
                enc.net(x["input_ids"], x["attention_mask"])
                ts.append(time.perf_counter() - t0)
        row = {"encoder": enc.identity, "encoder_params": params, "torch_ms_batch1": 1e3 * statistics.median(ts[5:])}
        edir = work / f"export-{name}"
        if edir.exists():
            shutil.rmtree(edir)
        meta = export_run(mixed_dir, pids[0], edir, parity_examples=32, agreement_examples=64)
        rt = PromptRuntime(edir)
        rts = []
        for t in texts:
            t0 = time.perf_counter()
            rt.prompts([t], batch_size=1)
            rts.append(time.perf_counter() - t0)
        row.update({"partition": pids[0], "onnx_bytes": (edir / FP32_FILE).stat().st_size,
                    "onnx_ms_batch1": 1e3 * statistics.median(rts[5:]), "export_h": meta.get("h"),
                    "export_r": meta.get("r"), "export_hidden": meta.get("hidden"),
                    "export_encoder": (meta.get("encoder") or {}).get("identity"),
                    "fp32_parity_max_abs": meta["parity"]["fp32"]["max_abs_diff"]})
        out[label] = row
    return out


def verdict(data: dict) -> list[str]:
    """The issue's two targets, stated plainly."""
    res = {r["row"]: r for r in data["results"] if r["status"] == "ok" and r["row"] != "costs"}
    lines = []
    if "mixed" in res and "all smallest" in res:
        small = "static:r=1"
        a, b = 100 * res["mixed"]["groups"][small]["acc_mean"], 100 * res["all smallest"]["groups"][small]["acc_mean"]
        lines.append(f"small-tier clients (static:r=1): mixed {a:.1f} vs all-smallest {b:.1f} → "
                     f"{'MET' if a > b else 'MISSED'} (Δ {a - b:+.1f} points)")
    if "mixed" in res and "all full" in res:
        full = "minilm:r=4"
        a, b = 100 * res["mixed"]["groups"][full]["acc_mean"], 100 * res["all full"]["groups"][full]["acc_mean"]
        lines.append(f"full-tier clients (minilm:r=4): mixed {a:.1f} vs all-full {b:.1f} → "
                     f"{'MET' if a >= b - 1.0 else 'MISSED'} (Δ {a - b:+.1f} points; target ≥ −1)")
    return lines


def render(data: dict) -> str:
    b = data["setup"]
    labels = list(groups_of(b))
    rows = []
    for r in data["results"]:
        if r["row"] == "costs":
            continue
        if r["status"] != "ok":
            rows.append([r["row"], "error: " + r["error"][:80]] + [""] * (len(labels) + 1))
            continue
        cells = [f"{100 * g['acc_mean']:.1f} / {100 * g['acc_min']:.1f}" for g in (r["groups"][lb] for lb in labels)]
        bytes_ = sorted({x for g in r["groups"].values() for x in g["reply_bytes"]})
        rows.append([r["row"], *cells, " / ".join(common.human_bytes(x) for x in bytes_) or "0 (none sent)",
                     f"{r['wall_seconds']:.0f}"])
    head = (f"SST-2, {b['clients']} clients of equal size, label mix ~ Dir(0.5), frozen all-MiniLM-L6-v2 + shared "
            f"head, LoPA m=10; {b['rounds']} rounds × {b['local_steps']} local steps (batch {b['batch']}), pool "
            f"{b['pool']}, ≤{b['max_test']} local test examples per client; cells: personalised accuracy % of the "
            "clients that run that tier in the mixed fleet, mean / worst client, last round")
    table = common.markdown_table(["row", *[f"clients {lb} {groups_of(b)[lb]}" for lb in labels],
                                   "bytes per train reply", "wall s"], rows)
    costs = next((r for r in data["results"] if r["row"] == "costs" and r["status"] == "ok"), None)
    ctable = ""
    if costs:
        ctable = "\n\n" + common.markdown_table(
            ["tier", "encoder params", "torch encoder ms (batch 1)", "ONNX prompt generator", "onnxruntime ms (batch 1)",
             "fp32 parity max|ΔZ|"],
            [[lb, f"{c['encoder_params'] / 1e6:.1f}M", f"{c['torch_ms_batch1']:.2f}",
              common.human_bytes(c["onnx_bytes"]), f"{c['onnx_ms_batch1']:.2f}", f"{c['fp32_parity_max_abs']:.1e}"]
             for lb, c in costs["tiers"].items()])
    note = f"\nNote: {data['meta']['contention']}" if data["meta"].get("contention") else ""
    return head + "\n" + table + ctable + "\n\n" + "\n".join(verdict(data)) + note


def main(argv: list[str] | None = None) -> dict:
    import json

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", choices=tuple(BUDGETS), default="small")
    ap.add_argument("--rows", default=None, help="comma-separated subset of: " + ", ".join(ROWS))
    ap.add_argument("--seed", type=int, default=9876)
    ap.add_argument("--timeout", type=float, default=2400.0, help="per simulated run")
    ap.add_argument("--no-costs", action="store_true", help="skip the latency / ONNX-size measurements")
    ap.add_argument("--work-dir", default=str(common.ROOT / "runs" / "bench-hetero"))
    ap.add_argument("--out-dir", default=str(common.RESULTS))
    ap.add_argument("--name", default=None)
    ap.add_argument("--resume", action="store_true", help="keep finished rows of an earlier result file of this name")
    args = ap.parse_args(argv)
    b = dict(BUDGETS[args.budget])
    rows = tuple(args.rows.split(",")) if args.rows else b["rows"]
    name = args.name or f"hetero-{args.budget}"
    out, work = Path(args.out_dir), Path(args.work_dir) / args.budget
    load0 = common.start_load()
    meta = common.metadata(seeds=[args.seed])
    results: list[dict] = []
    if args.resume and (out / f"{name}.json").is_file():
        results = [r for r in json.loads((out / f"{name}.json").read_text()).get("results", []) if r["status"] == "ok"]
    done = {r["row"] for r in results}
    data = {"meta": meta, "setup": {**b, "rows": rows, "task": "sst2", "alpha": 0.5, "partitioner": "inner-dirichlet",
                                    "model": "all-MiniLM-L6-v2 (classifier)", "m": 10, "lr": LR, "mixed": MIXED,
                                    "seed": args.seed}, "results": results}
    plan = [r for r in rows if r not in done]
    if not (args.no_costs or "costs" in done):  # right after the mixed fleet, whose clients it exports
        plan.insert(plan.index("mixed") + 1 if "mixed" in plan else 0, "costs")
    for row in plan:
        t0 = time.time()
        print(f"[hetero] {row} …", flush=True)
        try:
            if row == "costs":
                r = {"tiers": tier_costs(b, work / "mixed", work, args.seed), "wall_seconds": time.time() - t0}
            else:
                r = federated_row(b, row, args.seed, work / row.replace(" ", "-").replace(":", "_"), args.timeout)
            r["status"] = "ok"
        except Exception as exc:  # noqa: BLE001 - record and go on with the other rows
            r = {"status": "error", "error": f"{type(exc).__name__}: {exc}"[:2000]}
        results.append({"row": row, "load_average": common.load_average(), **r})
        data["results"] = results
        common.write_json(name, data, out)
        print(f"[hetero] {row}: {r['status']} in {time.time() - t0:.0f}s", flush=True)
    load1 = common.load_average()
    meta["machine"]["load_average_end"] = load1
    meta["contention"] = common.contention_note(load0, load1, own=os.cpu_count())  # Ray workers
    data["verdict"] = verdict(data)
    common.write_json(name, data, out)
    print(render(data))
    return data


if __name__ == "__main__":
    main()
