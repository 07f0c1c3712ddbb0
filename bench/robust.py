"""Robustness against simulated attackers, and accuracy against the DP budget ε, on SST-2.

10 iid clients, frozen MiniLM + LoPA (the run-config defaults, ``federate = zs``: Zs and the
shared head are federated). Each row runs the real ServerApp round loop and ClientApp
(``--runtime inprocess``, default: messages delivered in this process by
``server.testing.InProcessGrid``, no Ray start-up per row) or a Flower simulation
(``--runtime simulation``, ``server.launch.simulate``). Attackers
are partitions ``0 … k−1`` with the research knob ``attack`` / ``attackers`` /
``attack-scale`` (``lopa_fed/federation/attack.py``):

* ``signflip``: ``global − 10·Δ`` (sign-flipped update, ×10);
* ``noise``: Gaussian noise with the norm of the honest update (``attack-scale = 1``);
* ``labelflip``: honest training on the attacker's train split with flipped labels;
* ``nan``: all-NaN tensors; the row fails unless reply validation dropped every one of them.

Strategies fedavg, fedmedian, fedtrimmedavg (β = 0.2) and krum (f = 2): the defender assumes
at most 2 of 10 attackers. Reported per row: final personalised accuracy of the **honest**
clients (example-weighted mean and worst client), and the same over all clients.

The grid is ordered by importance, so a time budget runs the key slice first:
``--part core`` = the clean run and 2 of 10 attackers for every attack × strategy (20 runs);
``--part rest`` = 1 and 3 attackers (32 runs); ``--part all`` = both. Every finished row is
written at once; ``--resume`` keeps finished rows and runs only the missing ones.

``--dp`` measures server-side DP instead (FedAvg, no attackers, fixed clipping ``--dp-clip``,
noise multipliers ``--dp-noise``): accuracy against ε at δ = 1e-5 from the RDP accountant
(``server/privacy.py``), written to ``robust-dp-<budget>.json``.

    flock /work/heavy.lock nice -n 10 .venv/bin/python bench/robust.py --budget small --part core --resume
    flock /work/heavy.lock nice -n 10 .venv/bin/python bench/robust.py --budget small --part rest --resume
    flock /work/heavy.lock nice -n 10 .venv/bin/python bench/robust.py --budget small --dp --resume
    .venv/bin/python bench/robust.py --budget smoke            # 4 clients, 1 round: a minute or two
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common  # noqa: E402

STRATEGIES = ("fedavg", "fedmedian", "fedtrimmedavg", "krum")
#: attack → extra run-config keys
ATTACKS = {
    "signflip": {"attack-scale": 10.0},
    "noise": {"attack-scale": 1.0},
    "labelflip": {},
    "nan": {},
}
BUDGETS = {
    "smoke": dict(clients=4, rounds=1, local_steps=2, batch=8, pool=80, max_test=5, core=(1,), rest=()),
    # pool 2,000 over 10 iid clients: 160 train + 40 test examples each; 4 rounds × 8 local steps of 16
    # (0.8 local epoch per round): sized so the core slice (20 runs) fits in about an hour on 2 loaded cores
    "small": dict(clients=10, rounds=4, local_steps=8, batch=16, pool=2000, max_test=40, core=(2,), rest=(1, 3)),
}
LR = 3e-3  # bench/federated.py's LoPA lr on SST-2
DEFENCE = {"trim-beta": 0.2, "krum-malicious": 2}
DP_NOISE = (0.5, 2.0, 8.0)


def run_config(b: dict, strategy: str, attack: str, n_attackers: int, seed: int, extra: dict | None = None) -> dict:
    cfg = {
        "task": "sst2", "method": "lopa", "federate": "zs", "partitioner": "iid",
        "num-server-rounds": b["rounds"], "local-steps": b["local_steps"], "local-epochs": 1,
        "batch-size": b["batch"], "lr": LR, "pool-size": b["pool"], "max-test-examples": b["max_test"],
        "min-nodes": b["clients"], "seed": seed, "max-length": 128, "strategy": strategy, **DEFENCE,
    }
    if n_attackers:
        cfg.update({"attack": attack, "attackers": ",".join(str(i) for i in range(n_attackers)), **ATTACKS[attack]})
    cfg.update(extra or {})
    return cfg


def honest_stats(record: dict, attackers: set[int]) -> dict:
    """Example-weighted mean and worst client of the honest clients' accuracy in one round record."""
    rows = [(int(p), c["accuracy"], c["num_examples"]) for p, c in record["per_client"].items()]
    honest = [(a, n) for p, a, n in rows if p not in attackers]
    if not honest:
        return {"mean": None, "min": None}
    return {"mean": sum(a * n for a, n in honest) / sum(n for _, n in honest), "min": min(a for a, _ in honest)}


def simulated(b: dict, cfg: dict, out_dir: Path, timeout: float) -> list[dict]:
    """Round records of a run in Flower's simulation runtime (own SuperLink, Ray workers)."""
    from server.launch import simulate

    res = simulate(cfg, out_dir, num_clients=b["clients"], cpus_per_client=1.0, timeout=timeout)
    if not res.rounds or not res.completed:
        log = res.logs.get("flwr-run")
        tail = Path(log).read_text()[-1500:] if log and Path(log).is_file() else ""
        raise RuntimeError(f"run did not complete (rc {res.returncode}, {len(res.rounds)} rounds); log tail:\n{tail}")
    return res.rounds


def in_process(b: dict, cfg: dict, out_dir: Path) -> list[dict]:
    """Round records of the same ServerApp loop and ClientApp, messages delivered in this process.

    ``server.loop.run_federation`` drives ``clients.app.app`` through ``server.testing.InProcessGrid``:
    the same strategies, reply validation, DP wrapper and client code as a Flower run, without Ray
    workers and process start-up (the frozen model is loaded once for the whole grid).
    """
    from clients.app import app
    from lopa_fed.federation import FedSettings
    from server.loop import run_federation
    from server.testing import InProcessGrid

    settings = FedSettings.from_run_config({**cfg, "output-dir": str(out_dir)})
    n = b["clients"]
    grid = InProcessGrid({100 + i: (app, {"partition-id": i, "num-partitions": n}) for i in range(n)},
                         settings.to_run_config())
    return run_federation(grid, settings)["rounds"]


def federated(b: dict, cfg: dict, n_attackers: int, out_dir: Path, timeout: float, runtime: str) -> dict:
    """One run; honest-client accuracy per round and what validation rejected."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    t0 = time.time()
    rounds = simulated(b, cfg, out_dir, timeout) if runtime == "simulation" else in_process(b, cfg, out_dir)
    if len(rounds) != b["rounds"]:
        raise RuntimeError(f"{len(rounds)} of {b['rounds']} rounds recorded")
    attackers = set(range(n_attackers))
    per_round = [honest_stats(r, attackers) for r in rounds]
    last = rounds[-1]
    out = {
        "acc_mean": per_round[-1]["mean"], "acc_min": per_round[-1]["min"],
        "acc_mean_all": last["acc_mean"], "acc_min_all": last["acc_min"],
        "per_round_acc": [p["mean"] for p in per_round], "per_round_min": [p["min"] for p in per_round],
        "rejected_per_round": [r["rejected"] for r in rounds], "failed_per_round": [r["failed"] for r in rounds],
        "rejected_reasons": sorted({x["reason"].split(":")[-1].strip() for r in rounds for x in r["rejected_reasons"]}),
        "update_norm_per_round": [r["update_norm"] for r in rounds],
        "wall_seconds": time.time() - t0, "seconds_per_round": [r["seconds"] for r in rounds],
        "out_dir": str(out_dir),
    }
    if "dp" in last:
        out["dp"] = last["dp"]
        out["epsilon_per_round"] = [r.get("dp", {}).get("epsilon") for r in rounds]
    if cfg.get("attack") == "nan":
        bad = [r["round"] for r in rounds if r["rejected"] != n_attackers or r["replied"] != b["clients"] - n_attackers]
        if bad:
            raise AssertionError(f"NaN replies not dropped exactly in rounds {bad}: {out['rejected_per_round']}")
        out["nan_dropped"] = True
    return out


def plan_of(b: dict, part: str, strategies: tuple[str, ...], attacks: tuple[str, ...]) -> list[tuple[str, str, int]]:
    """``(strategy, attack, n_attackers)`` rows, the key slice first.

    Each strategy's clean run comes right before its run under the first attack (FedAvg first),
    so an interrupted grid still has the headline pairs; then the other attacks, strategy by strategy.
    """
    counts = {"clean": (), "core": b["core"], "rest": b["rest"], "all": b["core"] + b["rest"]}[part]
    rows: list[tuple[str, str, int]] = []
    for s in strategies:
        if part in ("clean", "core", "all"):
            rows.append((s, "none", 0))
        rows += [(s, attacks[0], k) for k in counts[:1]]
    rows += [(s, a, k) for k in counts for a in attacks for s in strategies if (s, a, k) not in rows]
    return rows


def _load(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [r for r in json.loads(path.read_text()).get("results", []) if r.get("status") == "ok"]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", choices=tuple(BUDGETS), default="small")
    ap.add_argument("--part", choices=("clean", "core", "rest", "all"), default="core",
                    help="clean: the 4 clean runs; core: clean + 2 of 10 attackers; rest: 1 and 3 attackers")
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--attacks", default=",".join(ATTACKS))
    ap.add_argument("--seed", type=int, default=9876)
    ap.add_argument("--dp", action="store_true", help="accuracy against epsilon (FedAvg, no attackers) instead")
    ap.add_argument("--dp-noise", default=",".join(str(x) for x in DP_NOISE), help="noise multipliers for --dp")
    ap.add_argument("--dp-clip", type=float, default=0.5, help="clipping norm of each client's update for --dp")
    ap.add_argument("--timeout", type=float, default=1800.0, help="per simulated run")
    ap.add_argument("--runtime", choices=("inprocess", "simulation"), default="inprocess",
                    help="inprocess: ServerApp loop + ClientApp in this process (default; no Ray start-up per row); "
                         "simulation: Flower's simulation runtime per row")
    ap.add_argument("--work-dir", default=str(common.ROOT / "runs" / "bench-robust"))
    ap.add_argument("--out-dir", default=str(common.RESULTS))
    ap.add_argument("--resume", action="store_true", help="keep finished rows of the result file; run the others")
    args = ap.parse_args(argv)
    b = BUDGETS[args.budget]
    name = f"robust-dp-{args.budget}" if args.dp else f"robust-{args.budget}"
    out = Path(args.out_dir)
    results = _load(out / f"{name}.json") if args.resume else []
    load0 = common.start_load()
    meta = common.metadata(seeds=[args.seed])
    setup = {**b, "task": "sst2", "model": "all-MiniLM-L6-v2 + LoPA (m 10, r 4), federate zs", "partitioner": "iid",
             "lr": LR, "max_length": 128, "defence": DEFENCE, "attacks": ATTACKS, "runtime": args.runtime}
    if args.dp:
        noises = tuple(float(x) for x in args.dp_noise.split(","))
        setup.update({"dp_clip": args.dp_clip, "dp_noise": noises, "dp_delta": 1e-5, "strategy": "fedavg"})
        plan = [("fedavg", f"dp-noise={z}", 0) for z in noises]
    else:
        plan = plan_of(b, args.part, tuple(args.strategies.split(",")), tuple(args.attacks.split(",")))
    key = lambda r: (r["strategy"], r["attack"], r["attackers"], r["seed"])  # noqa: E731
    done = {key(r) for r in results}
    data = {"meta": meta, "setup": setup, "results": results}
    with common.progress() as bar:
        t = bar.add_task("robust", total=len(plan))
        for strategy, attack, k in plan:
            bar.update(t, description=f"{strategy} {attack} ×{k}")
            if (strategy, attack, k, args.seed) in done:
                bar.advance(t)
                continue
            if args.dp:
                z = float(attack.split("=")[1])
                cfg = run_config(b, strategy, "none", 0, args.seed, {"dp-noise": z, "dp-clip": args.dp_clip})
            else:
                cfg = run_config(b, strategy, attack, k, args.seed)
            wd = Path(args.work_dir) / f"{args.budget}-{strategy}-{attack}-{k}-s{args.seed}"
            try:
                r = {**federated(b, cfg, k, wd, args.timeout, args.runtime), "status": "ok"}
            except Exception as exc:  # noqa: BLE001 - record and go on with the other rows
                r = {"status": "error", "error": f"{type(exc).__name__}: {exc}"[:2000]}
            results = [x for x in results if key(x) != (strategy, attack, k, args.seed)]
            results.append({"strategy": strategy, "attack": attack, "attackers": k, "seed": args.seed,
                            "run_config": cfg, **r, "load_average": common.load_average()})
            data["results"] = results
            common.write_json(name, data, out)
            bar.advance(t)
    meta["machine"]["load_average_end"] = common.load_average()
    meta["contention"] = common.contention_note(load0, meta["machine"]["load_average_end"],
                                                own=os.cpu_count() if args.runtime == "simulation" else None)
    data["summary"] = dp_summary(results) if args.dp else summary(results)
    common.write_json(name, data, out)
    print(render_dp(data) if args.dp else render(data))
    (plot_dp if args.dp else plot)(data, out, name)
    return data


def _ok(results: list[dict], strategy: str, attack: str, k: int) -> dict | None:
    rows = [r for r in results if r["status"] == "ok" and (r["strategy"], r["attack"], r["attackers"]) ==
            (strategy, attack, k)]
    return rows[-1] if rows else None


def clean_on(clean: dict, k: int) -> dict:
    """A clean row's final accuracy over the clients that are honest when partitions ``0 … k−1`` attack."""
    if not k:
        return {"acc_mean": clean["acc_mean"], "acc_min": clean["acc_min"]}
    path = Path(clean["out_dir"]) / "rounds.json"
    if path.is_file():
        st = honest_stats(json.loads(path.read_text())[-1], set(range(k)))
        return {"acc_mean": st["mean"], "acc_min": st["min"]}
    return {"acc_mean": clean["acc_mean"], "acc_min": clean["acc_min"]}  # run dir gone: all clients


def summary(results: list[dict]) -> dict:
    """Per attack and attacker count: each strategy's drop from its clean run, and the target check."""
    out: dict = {}
    attacks = sorted({r["attack"] for r in results if r["attack"] != "none"})
    counts = sorted({r["attackers"] for r in results if r["attackers"]})
    for k in counts:
        for a in attacks:
            cell = {}
            for s in STRATEGIES:
                clean, hit = _ok(results, s, "none", 0), _ok(results, s, a, k)
                if clean and hit:
                    clean = clean_on(clean, k)  # the same honest clients
                    cell[s] = {"drop_mean": round(100 * (clean["acc_mean"] - hit["acc_mean"]), 2),
                               "drop_worst": round(100 * (clean["acc_min"] - hit["acc_min"]), 2)}
            if cell:
                robust = {s: v for s, v in cell.items() if s != "fedavg"}
                best = min(robust, key=lambda s: robust[s]["drop_mean"]) if robust else None
                out[f"{a} x{k}"] = {"drops (points, vs the same strategy's clean run on the same honest clients)": cell,
                                    "best robust": best,
                                    "best robust within 2 points": bool(best and robust[best]["drop_mean"] <= 2.0)}
    return out


def render(data: dict) -> str:
    rows = []
    for r in sorted(data["results"], key=lambda r: (r["attackers"], r["attack"], STRATEGIES.index(r["strategy"])
                                                     if r["strategy"] in STRATEGIES else 9)):
        if r["status"] != "ok":
            rows.append((r["attack"], r["attackers"], r["strategy"], "error: " + r["error"][:60], "", "", "", ""))
            continue
        clean = _ok(data["results"], r["strategy"], "none", 0)
        ref = clean_on(clean, r["attackers"]) if clean else None
        drop = f"{100 * (ref['acc_mean'] - r['acc_mean']):+.1f}" if ref and r["attackers"] else ""
        rows.append((r["attack"], r["attackers"], r["strategy"], f"{100 * r['acc_mean']:.1f}",
                     f"{100 * r['acc_min']:.1f}", drop, sum(r["rejected_per_round"]), f"{r['wall_seconds']:.0f}"))
    b = data["setup"]
    head = (f"SST-2, {b['clients']} iid clients, {b['model']}, {b['rounds']} rounds × {b['local_steps']} local steps "
            f"(batch {b['batch']}), pool {b['pool']} ({b['max_test']} test examples per client); honest clients only")
    note = f"\nNote: {data['meta']['contention']}" if data["meta"].get("contention") else ""
    return head + "\n" + common.markdown_table(
        ["attack", "attackers", "strategy", "acc mean %", "acc worst %", "drop vs clean, same clients (points)",
         "replies rejected", "wall s"], rows) + note


def plot(data: dict, out: Path, name: str) -> None:
    plt = common.plt()
    attacks = [a for a in ATTACKS if any(r["attack"] == a for r in data["results"])]
    if not attacks:
        return
    fig, axes = plt.subplots(2, len(attacks), figsize=(4 * len(attacks), 7), squeeze=False)
    for j, a in enumerate(attacks):
        for s in STRATEGIES:
            pts = [(0, _ok(data["results"], s, "none", 0))] + [
                (k, _ok(data["results"], s, a, k)) for k in sorted({r["attackers"] for r in data["results"]}) if k]
            pts = [(k, r) for k, r in pts if r]
            for i, key in enumerate(("acc_mean", "acc_min")):
                axes[i][j].plot([k for k, _ in pts], [100 * r[key] for _, r in pts], marker="o", label=s)
        for i, what in enumerate(("mean", "worst")):
            ax = axes[i][j]
            ax.set_title(f"{a}: honest clients, {what}", fontsize=9)
            ax.set_xlabel("attackers of 10")
            ax.set_ylabel("personalised accuracy %")
            ax.xaxis.get_major_locator().set_params(integer=True)
            ax.grid(alpha=0.3)
        axes[0][j].legend(fontsize=7)
    common.save_fig(fig, name, out)


def dp_summary(results: list[dict]) -> dict:
    return {r["attack"]: {"epsilon": r.get("dp", {}).get("epsilon"), "acc_mean": r.get("acc_mean"),
                          "acc_min": r.get("acc_min")} for r in results if r["status"] == "ok"}


def render_dp(data: dict) -> str:
    rows = []
    for r in data["results"]:
        if r["status"] != "ok":
            rows.append((r["attack"], "error: " + r["error"][:60], "", "", ""))
            continue
        dp = r.get("dp", {})
        eps = dp.get("epsilon")
        rows.append((dp.get("noise_multiplier"), f"{eps:.2f}" if eps is not None else "n/a", dp.get("delta"),
                     f"{100 * r['acc_mean']:.1f}", f"{100 * r['acc_min']:.1f}"))
    b = data["setup"]
    head = (f"SST-2, {b['clients']} iid clients (all sampled each round: q = 1), FedAvg + server-side fixed clipping "
            f"C = {b['dp_clip']}, {b['rounds']} rounds × {b['local_steps']} local steps; ε after the last round")
    return head + "\n" + common.markdown_table(
        ["noise multiplier σ", "ε", "δ", "acc mean %", "acc worst %"], rows)


def plot_dp(data: dict, out: Path, name: str) -> None:
    plt = common.plt()
    pts = sorted((r["dp"]["epsilon"], r) for r in data["results"] if r["status"] == "ok" and r.get("dp"))
    if not pts:
        return
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.plot([e for e, _ in pts], [100 * r["acc_mean"] for _, r in pts], marker="o", label="mean")
    ax.plot([e for e, _ in pts], [100 * r["acc_min"] for _, r in pts], marker="s", label="worst client")
    ax.set_xscale("log")
    ax.set_xlabel("ε at δ = 1e-5 (RDP accountant)")
    ax.set_ylabel("personalised accuracy %")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    common.save_fig(fig, name, out)


if __name__ == "__main__":
    main()
