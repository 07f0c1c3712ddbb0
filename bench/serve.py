"""The model host under load: LoPA (one frozen model, Z per request) against a PEFT LoRA host.

Rows
----
* **LoPA host** (``lopa-fed serve``, a real uvicorn process): 1, 10, 100 and 1,000 distinct users
  (distinct random Zs of the export's shape), concurrency 1, 8 and 32, real SST-2 dev text:
  requests/s, p50/p99 latency and the server's RSS after each cell.
* **Burst**: ``--burst`` requests (default 10,000) at concurrency 32: failed requests.
* **No batching**: the same host with ``--max-batch 1`` at concurrency 32.
* **PEFT LoRA host** (in-process, the same frozen MiniLM): N resident LoRA r=16 q/k/v adapters,
  mixed-adapter batches through ``adapter_names=`` (every row another user): process RSS and
  adapter bytes against N, and rows/s at batch 32.

    .venv/bin/python bench/serve.py --prompt-dir exports/sst2-lopa            # full table
    .venv/bin/python bench/serve.py --prompt-dir exports/sst2-lopa --quick    # minutes: fewer cells

Results go to ``bench/results/serve.json`` cell by cell (``--resume`` keeps finished cells).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common  # noqa: E402


def rss_mb(pid: int) -> float:
    """Resident set size of ``pid`` in MB."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def user_prompts(n: int, shape: tuple[int, int], seed: int = 0) -> list[str]:
    """``n`` distinct users' Zs (N(0, 0.05²) rows of the export's shape), base64-encoded once."""
    import numpy as np

    from export.serve.codec import encode_z

    rng = np.random.default_rng(seed)
    return [encode_z(rng.standard_normal(shape).astype("float32") * 0.05) for _ in range(n)]


async def load(url: str, texts: list[str], zs: list[str], requests: int, concurrency: int) -> dict:
    """``requests`` classify calls spread over the users, ``concurrency`` in flight at a time."""
    import httpx

    lat: list[float] = []
    failed = 0
    sem = asyncio.Semaphore(concurrency)

    async def one(client, i: int) -> None:
        nonlocal failed
        async with sem:
            t0 = time.perf_counter()
            try:
                r = await client.post("/v1/classify", json={"text": texts[i % len(texts)], "z": zs[i % len(zs)]})
                failed += r.status_code != 200
            except httpx.HTTPError:
                failed += 1
            lat.append(time.perf_counter() - t0)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(one(client, i) for i in range(requests)))
        wall = time.perf_counter() - t0
    lat.sort()
    return {"requests": requests, "failed": failed, "seconds": wall, "rps": requests / wall,
            "p50_ms": 1000 * lat[len(lat) // 2], "p99_ms": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))]}


def lopa_rows(args, texts: list[str], shape: tuple[int, int], done: dict, save) -> None:
    """The LoPA host cells, the burst and the no-batching row."""
    import httpx

    from export.serve.process import start_server, stop_server

    for label, extra in (("batched", ["--max-batch", "32", "--max-wait-ms", "5"]), ("batch-1", ["--max-batch", "1"])):
        cells = [(u, c) for u in args.users for c in args.concurrency] if label == "batched" else [(max(args.users), 32)]
        todo = [cell for cell in cells if f"{label}/{cell[0]}/{cell[1]}" not in done]
        if not todo and (label == "batch-1" or "burst" in done):
            continue
        proc, url = start_server(args.prompt_dir, *extra, "--threads", str(args.threads))
        try:
            asyncio.run(load(url, texts, user_prompts(1, shape), 64, 8))  # warm-up
            for users, conc in todo:
                res = asyncio.run(load(url, texts, user_prompts(users, shape, seed=users), args.requests, conc))
                stats = httpx.get(url + "/v1/stats").json()
                done[f"{label}/{users}/{conc}"] = {**res, "host": label, "users": users, "concurrency": conc,
                                                   "rss_mb": rss_mb(proc.pid), "mean_batch": stats["rows"] / max(stats["forward_passes"], 1)}
                print(label, users, conc, {k: round(v, 1) for k, v in res.items() if isinstance(v, float)}, flush=True)
                save()
            if label == "batched" and "burst" not in done and args.burst:
                res = asyncio.run(load(url, texts, user_prompts(max(args.users), shape, seed=7), args.burst, 32))
                done["burst"] = {**res, "host": "burst", "users": max(args.users), "concurrency": 32,
                                 "rss_mb": rss_mb(proc.pid)}
                save()
        finally:
            stop_server(proc)


def peft_rows(args, texts: list[str], done: dict, save) -> None:
    """Resident LoRA adapters and mixed-adapter batches on the same frozen model (in-process)."""
    import os

    import torch
    from peft import LoraConfig, get_peft_model

    from lopa_fed.backbone import FrozenModel

    frozen = FrozenModel.load("default")
    tok = frozen.tokenizer
    batch = tok(texts[:32], padding=True, truncation=True, max_length=128, return_tensors="pt")
    base = frozen.model
    rss0 = rss_mb(os.getpid())
    model, have = None, 0
    for n in sorted(args.adapters):
        key = f"peft/{n}"
        cfg = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=["query", "key", "value"])
        if model is None:
            model = get_peft_model(base, cfg, adapter_name="u0")
            have = 1
        while have < n:
            model.add_adapter(f"u{have}", cfg)
            have += 1
        for name, p in model.named_parameters():  # trained-looking, distinct adapters
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.01)
        per = sum(p.numel() * p.element_size() for nm, p in model.named_parameters() if ".u0." in nm or nm.endswith(".u0.weight"))
        names = [f"u{i % n}" for i in range(batch["input_ids"].shape[0])]
        model.eval()
        with torch.no_grad():
            model(**batch, adapter_names=names)  # warm-up
            t0 = time.perf_counter()
            reps = 5
            for _ in range(reps):
                model(**batch, adapter_names=names)
            sec = (time.perf_counter() - t0) / reps
        done[key] = {"host": "peft-lora16", "adapters": n, "adapter_bytes_each": per, "adapter_bytes_total": per * n,
                     "rss_mb": rss_mb(os.getpid()), "rss_growth_mb": rss_mb(os.getpid()) - rss0,
                     "rows_per_s": batch["input_ids"].shape[0] / sec}
        print(key, {k: round(v, 1) if isinstance(v, float) else v for k, v in done[key].items()}, flush=True)
        save()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompt-dir", required=True, help="a classification export (lopa-fed export --out)")
    ap.add_argument("--users", default="1,10,100,1000")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--requests", type=int, default=512, help="requests per cell")
    ap.add_argument("--burst", type=int, default=10000, help="requests in the burst row (0: none)")
    ap.add_argument("--adapters", default="1,10,100", help="resident LoRA adapters for the PEFT rows")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="users 1,1000; concurrency 1,32; 128 requests; burst 2000")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--name", default="serve")
    args = ap.parse_args(argv)
    if args.quick:
        args.users, args.concurrency, args.requests, args.burst = "1,1000", "1,32", 128, 2000
    args.users = [int(x) for x in args.users.split(",")]
    args.concurrency = [int(x) for x in args.concurrency.split(",")]
    args.adapters = [int(x) for x in args.adapters.split(",") if x]
    import torch

    torch.set_num_threads(args.threads)
    from export.runtime import read_sidecar
    from lopa_fed.tasks import get_task

    meta = read_sidecar(args.prompt_dir)
    shape = (int(meta["num_tokens"]), int(meta["d"]))
    texts = [ex.text_a for ex in get_task(meta["task"]).read("dev")]
    path = common.RESULTS / f"{args.name}.json"
    old = json.loads(path.read_text()) if args.resume and path.is_file() else {}
    data = {"meta": common.metadata(prompt_dir=str(args.prompt_dir), args={k: v for k, v in vars(args).items()}),
            "cells": old.get("cells", {})}
    done = data["cells"]

    def save() -> None:
        common.write_json(args.name, data)

    lopa_rows(args, texts, shape, done, save)
    if args.adapters:
        peft_rows(args, texts, done, save)
    data["meta"]["machine"]["load_average_end"] = common.load_average()
    save()
    print(render(done))
    return 0


def render(cells: dict) -> str:
    """Markdown tables of the LoPA host cells and the PEFT rows."""
    lopa = [c for c in cells.values() if c.get("host") in ("batched", "batch-1", "burst")]
    rows = [(c["host"], c["users"], c["concurrency"], f"{c['rps']:.1f}", f"{c['p50_ms']:.0f}", f"{c['p99_ms']:.0f}",
             f"{c['rss_mb']:.0f}", c["failed"]) for c in lopa]
    out = common.markdown_table(("host", "users", "concurrency", "req/s", "p50 ms", "p99 ms", "RSS MB", "failed"), rows)
    peft = [c for c in cells.values() if c.get("host") == "peft-lora16"]
    if peft:
        out += "\n\n" + common.markdown_table(
            ("LoRA adapters resident", "adapter bytes (all)", "process RSS MB", "rows/s at batch 32"),
            [(c["adapters"], common.human_bytes(c["adapter_bytes_total"]), f"{c['rss_mb']:.0f}", f"{c['rows_per_s']:.1f}")
             for c in peft])
    return out


if __name__ == "__main__":
    sys.exit(main())
