"""Our KV-cached batched decoding against ``transformers``' ``generate(inputs_embeds=...)``.

Protocol
--------
* Frozen model: SmolLM2-135M-Instruct (``FrozenModel.load("smollm2", "causal")``), fp32 on
  CPU, **one torch thread** (the machine is shared; both implementations get the same one).
* Prompts: the first ``--limit`` (default 8) problems of the CruxEval-O test half, in the
  chat template (:func:`lopa_fed.codegen.prompting.chat_prompt` / ``encode_prompt``).
* Prefix: a seeded random soft prefix ``Z`` (B×m×d, m = 10) scaled to the embedding
  standard deviation, so it moves the logits like a trained one.
* Layout: both sides get the *same* left-padded ``[pad ; Z ; x]`` embeddings and mask from
  :func:`lopa_fed.codegen.generate.prompt_layout`. Ours passes the position ids
  ``cumsum(mask) - 1``; the library builds its own from the attention mask (the same
  numbers on attended positions; padding is masked either way).
* Decoding: greedy, ``--max-new-tokens`` (default 64, the CruxEval default), stopping at
  the model's end-of-sequence ids, no stop strings.
* (a) Exactness: token-for-token equality of the two outputs at batch 1 (each prompt
  alone) and at batch ``--limit`` (all prompts together).
* (b) Speed: wall (and process CPU) seconds per generated token (generated tokens summed over the rows),
  median (and best) over ``--repeats`` runs, interleaving the two implementations run by run
  so both see the same load on a shared machine, at batch 1 (the first ``--batch1-prompts`` prompts, one
  at a time) and at batch ``--limit``.
* (c) Work: forward calls and token positions computed at batch ``--limit`` (a forward
  pre-hook; noise-free): ours drops finished rows from the batch and the KV cache, the
  library keeps computing them until the last row ends.

    .venv/bin/python bench/generate.py --repeats 7     # ~11 min on a loaded shared machine
    .venv/bin/python bench/generate.py --repeats 1     # quicker

Writes ``bench/results/generate.json``. The decision it informed (keep our loop) is stated,
with the numbers, in :mod:`lopa_fed.codegen.generate`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common  # noqa: E402


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--limit", type=int, default=8, help="prompts (= the large batch size)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batch1-prompts", type=int, default=3, help="prompts timed one at a time")
    p.add_argument("--prefix", type=int, default=10, help="soft prefix length m")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="generate")
    return p.parse_args(argv)


def _library(frozen, ids, z, max_new_tokens: int) -> list[list[int]]:
    """transformers' greedy ``generate`` on the same ``[pad ; Z ; x]`` embeddings; eos cut off."""
    import torch

    from lopa_fed.codegen.generate import _eos_ids, prompt_layout

    embeds, mask, _ = prompt_layout(frozen, ids, z)
    eos = sorted(_eos_ids(frozen))
    with torch.no_grad():
        out = frozen.model.generate(
            inputs_embeds=embeds,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            temperature=None,
            top_p=None,
            top_k=None,
            eos_token_id=eos,
            pad_token_id=int(frozen.tokenizer.pad_token_id),
            use_cache=True,
        )
    rows = []
    for row in out.tolist():  # only the new tokens: no input_ids were given
        cut = next((j for j, t in enumerate(row) if t in eos), len(row))
        rows.append(row[:cut])
    return rows


def _ours(frozen, ids, z, max_new_tokens: int) -> list[list[int]]:
    from lopa_fed.codegen.generate import GenerationConfig, generate_tokens

    return generate_tokens(frozen, ids, z, GenerationConfig(max_new_tokens=max_new_tokens))


def _timed(impls, batches, repeats: int) -> dict[str, dict]:
    """Run every implementation on every batch ``repeats`` times, interleaved (ABAB, then BABA...).

    Interleaving gives both sides the same share of a shared machine's load drift.
    Returns per implementation: the outputs of its last run, wall and CPU seconds per run,
    generated tokens.
    """
    res = {name: {"outputs": [], "runs": [], "cpu": []} for name in impls}
    order = list(impls)
    for r in range(repeats):
        for name in order if r % 2 == 0 else order[::-1]:
            t0, c0 = time.perf_counter(), time.process_time()
            res[name]["outputs"] = [impls[name](ids, z) for ids, z in batches]
            res[name]["runs"].append(time.perf_counter() - t0)
            res[name]["cpu"].append(time.process_time() - c0)
    for v in res.values():
        v["tokens"] = sum(len(row) for out in v["outputs"] for row in out)
    return res


def _compare(name: str, batches, args) -> dict:
    frozen = batches[0][2]
    plain = [(ids, z) for ids, z, _ in batches]
    impls = {
        "ours": lambda i, z: _ours(frozen, i, z, args.max_new_tokens),
        "library": lambda i, z: _library(frozen, i, z, args.max_new_tokens),
    }
    timed = _timed(impls, plain, args.repeats)
    res = {}
    for impl, t in timed.items():
        tokens = max(t["tokens"], 1)
        res[impl] = {
            "outputs": t["outputs"],
            "seconds": [round(s, 4) for s in t["runs"]],
            "generated_tokens": t["tokens"],
            "ms_per_token": round(1000 * common.median(t["runs"]) / tokens, 3),
            "ms_per_token_best": round(1000 * min(t["runs"]) / tokens, 3),
            "cpu_seconds": [round(s, 4) for s in t["cpu"]],
            "cpu_ms_per_token": round(1000 * common.median(t["cpu"]) / tokens, 3),
        }
    a = [r for out in res["ours"]["outputs"] for r in out]
    b = [r for out in res["library"]["outputs"] for r in out]
    mismatch = [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
    first_diff = []
    for i in mismatch:
        j = next((k for k, (p, q) in enumerate(zip(a[i], b[i])) if p != q), min(len(a[i]), len(b[i])))
        first_diff.append({"row": i, "at_token": j, "ours_len": len(a[i]), "library_len": len(b[i])})
    ratio = res["library"]["ms_per_token"] / res["ours"]["ms_per_token"]
    best = res["library"]["ms_per_token_best"] / res["ours"]["ms_per_token_best"]
    cpu = res["library"]["cpu_ms_per_token"] / res["ours"]["cpu_ms_per_token"]
    exact = not mismatch and len(a) == len(b)
    print(
        f"{name}: exact={exact}  median ms/token ours {res['ours']['ms_per_token']}, "
        f"library {res['library']['ms_per_token']} (library/ours {ratio:.3f}; best-run {best:.3f}; CPU {cpu:.3f})",
        flush=True,
    )
    return {
        "exact": exact,
        "rows": len(a),
        "mismatched_rows": first_diff,
        "library_over_ours_time": round(ratio, 4),
        "library_over_ours_time_best_run": round(best, 4),
        "library_over_ours_cpu_time": round(cpu, 4),
        "ours": {k: v for k, v in res["ours"].items() if k != "outputs"},
        "library": {k: v for k, v in res["library"].items() if k != "outputs"},
        "ours_tokens": a,
        "library_tokens": b,
    }


def _work(frozen, fn, ids, z, max_new_tokens: int) -> dict[str, int]:
    """Forward calls and token positions the model computes for one run (noise-free cost proxy).

    A forward pre-hook counts, per call, batch rows x new positions (``inputs_embeds`` or
    ``input_ids`` length): the prefill is the same for both implementations; the decode
    steps differ when rows finish at different times.
    """
    counts = {"forward_calls": 0, "positions": 0, "decode_positions": 0}

    def hook(module, args, kwargs):
        x = kwargs.get("inputs_embeds")
        x = kwargs.get("input_ids") if x is None else x
        counts["forward_calls"] += 1
        counts["positions"] += int(x.shape[0] * x.shape[1])
        if counts["forward_calls"] > 1:
            counts["decode_positions"] += int(x.shape[0] * x.shape[1])

    handle = frozen.model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        fn(frozen, ids, z, max_new_tokens)
    finally:
        handle.remove()
    return counts


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    import torch

    torch.set_num_threads(1)
    from lopa_fed.backbone import FrozenModel
    from lopa_fed.codegen.prompting import chat_prompt, encode_prompt
    from lopa_fed.tasks import get_task

    meta = common.metadata(seeds=[args.seed], args=vars(args))
    frozen = FrozenModel.load("smollm2", "causal")
    tok = frozen.tokenizer
    examples = get_task("cruxeval-o").read("dev", limit=args.limit)
    ids = [encode_prompt(tok, chat_prompt(tok, ex.prompt)) for ex in examples]
    g = torch.Generator().manual_seed(args.seed)
    scale = float(frozen.embeddings.weight.detach().std())
    z = torch.randn(len(ids), args.prefix, frozen.d, generator=g) * scale
    print(f"{len(ids)} prompts, lengths {[len(x) for x in ids]}, prefix m={args.prefix}", flush=True)
    one = [([ids[i]], z[i : i + 1], frozen) for i in range(min(args.batch1_prompts, len(ids)))]
    many = [(ids, z, frozen)]
    exact_one = [([ids[i]], z[i : i + 1], frozen) for i in range(len(ids))]
    results = {
        "batch_1": _compare("batch 1", one, args),
        f"batch_{len(ids)}": _compare(f"batch {len(ids)}", many, args),
    }
    # exactness of every prompt alone (one run each, not timed)
    rest = _compare("batch 1, every prompt (1 run)", exact_one, argparse.Namespace(**{**vars(args), "repeats": 1}))
    results["batch_1_all_prompts_exact"] = {k: rest[k] for k in ("exact", "rows", "mismatched_rows")}
    results[f"batch_{len(ids)}_work"] = {
        name: _work(frozen, fn, ids, z, args.max_new_tokens) for name, fn in (("ours", _ours), ("library", _library))
    }
    print(f"work at batch {len(ids)}: {results[f'batch_{len(ids)}_work']}", flush=True)
    meta["machine_end"] = {"load_average": common.load_average()}
    note = common.contention_note(meta["machine"]["load_average"], meta["machine_end"]["load_average"])
    path = common.write_json(
        args.out,
        {
            "metadata": meta,
            "note": note,
            "prompt_lengths": [len(x) for x in ids],
            "uids": [ex.uid for ex in examples],
            "results": results,
        },
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
