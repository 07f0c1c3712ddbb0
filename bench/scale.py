"""Scale: 10, 50 and 100 simulated clients for 1 round on small per-client data.

Each count is one real Flower simulation (``server.launch.simulate``, 1 CPU per client,
so Ray runs 2 worker processes on 2 cores). While it runs, a sampler thread sums the RSS
of this process and every descendant (SuperLink, ServerApp, simulation runtime, Ray
workers) every 0.25 s; the peak is reported. Also: seconds for the round, total wall
time, and the number of frozen-model loads per worker process (``model-loads`` reported
by every client reply; it must be 1: one MiniLM load serves the frozen model and the
instance encoder of every client handled by that worker).

    .venv/bin/python bench/scale.py                     # 10, 50, 100
    .venv/bin/python bench/scale.py --counts 2 --per-client 8    # smoke
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common  # noqa: E402


def _tree_rss_bytes(root: int) -> tuple[int, int]:
    """(sum of RSS, number of processes) for ``root`` and all its descendants.

    A sum of RSS counts pages shared between processes (e.g. the torch libraries) once per
    process, so it over-states physical memory; :func:`_tree_pss_bytes` gives the fair share.
    """
    try:
        import psutil

        p = psutil.Process(root)
        procs = [p, *p.children(recursive=True)]
        total = 0
        for q in procs:
            try:
                total += q.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        return total, len(procs)
    except ImportError:  # /proc fallback
        kids: dict[int, list[int]] = {}
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
                    kids.setdefault(ppid, []).append(int(d))
                except (OSError, IndexError, ValueError):
                    pass
        stack, total, n = [root], 0, 0
        while stack:
            pid = stack.pop()
            stack += kids.get(pid, [])
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS"):
                        total += int(line.split()[1]) * 1024
                        n += 1
            except OSError:
                pass
        return total, n


def _tree_pss_bytes(root: int) -> int | None:
    """Sum of PSS (shared pages split between their users) over the tree; None without psutil."""
    try:
        import psutil
    except ImportError:
        return None
    p = psutil.Process(root)
    total = 0
    for q in [p, *p.children(recursive=True)]:
        try:
            total += getattr(q.memory_full_info(), "pss", 0)
        except (psutil.NoSuchProcess, psutil.AccessDenied, OSError):
            pass
    return total


class PeakRSS:
    """Background sampler of the whole process tree's RSS."""

    def __init__(self, interval: float = 0.25) -> None:
        self.interval = interval
        self.peak = 0
        self.peak_procs = 0
        self.max_procs = 0
        self.peak_pss = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = os.getpid()
        while not self._stop.is_set():
            rss, n = _tree_rss_bytes(me)
            if rss > self.peak:
                self.peak, self.peak_procs = rss, n
            self.max_procs = max(self.max_procs, n)
            pss = _tree_pss_bytes(me)
            if pss:
                self.peak_pss = max(self.peak_pss, pss)
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRSS:
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--counts", default="10,50,100", help="client counts")
    ap.add_argument("--per-client", type=int, default=20, help="pool examples per client (iid partition)")
    ap.add_argument("--local-steps", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--method", default="lopa")
    ap.add_argument("--cpus-per-client", type=float, default=1.0)
    ap.add_argument("--timeout", type=float, default=3600.0)
    ap.add_argument("--work-dir", default=str(common.ROOT / "runs" / "bench-scale"))
    ap.add_argument("--out-dir", default=str(common.RESULTS))
    ap.add_argument("--name", default="scale")
    args = ap.parse_args(argv)

    from server.launch import simulate

    counts = [int(c) for c in args.counts.split(",")]
    load0 = common.start_load()
    meta = common.metadata(seeds=[9876])
    results = []
    data = {"meta": meta, "setup": {"counts": counts, "per_client": args.per_client, "local_steps": args.local_steps,
                                    "batch_size": args.batch_size, "method": args.method, "rounds": 1,
                                    "cpus_per_client": args.cpus_per_client, "partitioner": "iid", "task": "sst2",
                                    "workers": int((os.cpu_count() or 1) // max(args.cpus_per_client, 1e-9))}}
    with common.progress() as bar:
        t = bar.add_task("scale", total=len(counts))
        for n in counts:
            bar.update(t, description=f"{n} clients")
            wd = Path(args.work_dir) / f"n{n}"
            if wd.exists():
                shutil.rmtree(wd)
            cfg = {"task": "sst2", "method": args.method, "federate": "zs", "partitioner": "iid",
                   "num-server-rounds": 1, "local-steps": args.local_steps, "batch-size": args.batch_size,
                   "pool-size": n * args.per_client, "max-test-examples": max(2, args.per_client // 5),
                   "min-nodes": n, "max-length": 64, "round-timeout": args.timeout}
            t0 = time.time()
            rec = {"clients": n}
            try:
                with PeakRSS() as mon:
                    res = simulate(cfg, wd, num_clients=n, cpus_per_client=args.cpus_per_client, timeout=args.timeout)
                r = res.rounds[-1] if res.rounds else {}
                rec.update(status="ok" if res.rounds else f"no rounds (rc {res.returncode})",
                           peak_rss_bytes=mon.peak, peak_pss_bytes=mon.peak_pss, peak_rss_processes=mon.peak_procs, max_processes=mon.max_procs,
                           seconds_per_round=r.get("seconds"), wall_seconds=time.time() - t0,
                           model_loads_per_worker_max=r.get("model_loads_max"), replied=r.get("replied"),
                           eval_replied=r.get("eval_replied"), failed=r.get("failed"), acc_mean=r.get("acc_mean"),
                           returncode=res.returncode)
            except Exception as exc:  # noqa: BLE001 - record it; larger counts are what we probe
                rec.update(status=f"error: {type(exc).__name__}: {exc}"[:1000], wall_seconds=time.time() - t0)
            results.append(rec)
            data["results"] = results
            common.write_json(args.name, data, Path(args.out_dir))
            bar.advance(t)
    ok = [r["clients"] for r in results if r["status"] == "ok" and r.get("replied") == r["clients"]]
    data["largest_ok"] = max(ok) if ok else None
    load1 = common.load_average()
    meta["machine"]["load_average_end"] = load1
    meta["contention"] = common.contention_note(load0, load1, own=os.cpu_count())  # Ray workers
    common.write_json(args.name, data, Path(args.out_dir))
    rows = [(r["clients"], r["status"], common.human_bytes(r.get("peak_rss_bytes") or 0),
             common.human_bytes(r.get("peak_pss_bytes") or 0), r.get("max_processes"),
             f"{r['seconds_per_round']:.0f}" if r.get("seconds_per_round") else "", f"{r['wall_seconds']:.0f}",
             r.get("model_loads_per_worker_max"), f"{r.get('replied')}/{r['clients']}") for r in results]
    print(common.markdown_table(["clients", "status", "peak RSS sum (process tree)", "peak PSS sum", "processes", "s / round",
                                 "wall s", "frozen-model loads per worker", "replied"], rows))
    print(f"largest client count that completed: {data['largest_ok']}")
    if meta.get("contention"):
        print("note:", meta["contention"])
    if len(results) > 1:
        plt = common.plt()
        fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
        okr = [r for r in results if r.get("peak_rss_bytes")]
        ax[0].plot([r["clients"] for r in okr], [r["peak_rss_bytes"] / 1e9 for r in okr], marker="o")
        ax[0].set_xlabel("clients")
        ax[0].set_ylabel("peak RSS, GB")
        ax[1].plot([r["clients"] for r in okr], [r.get("seconds_per_round") or 0 for r in okr], marker="o")
        ax[1].set_xlabel("clients")
        ax[1].set_ylabel("seconds per round")
        common.save_fig(fig, args.name, Path(args.out_dir))
    return data


if __name__ == "__main__":
    main()
