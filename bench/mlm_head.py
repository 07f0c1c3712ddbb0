"""The MLM verbalizer path: the LM head at every position against the read position only.

Protocol
--------
* Frozen model: all-MiniLM-L6-v2 loaded as a masked LM (``FrozenModel.load("default", "mlm")``;
  the shipped weights carry no MLM head, so the head is freshly initialised: fine for timing,
  meaningless for accuracy). Vocabulary 30,522, d = 384.
* Input: a seeded soft prefix ``Z`` (B×m×d, m = 10) and B = ``--batch`` random token rows of
  length ``--length``, one ``<mask>`` read position per row.
* Step: forward to the verbalizer logits (2 label words), cross-entropy, backward into ``Z``
  (the prompt's gradient flows through the frozen model either way).
* ``full``: the head on all ``B×(m+L)`` positions, then one row gathered (the old path).
  ``read``: the encoder body, then the head on the ``B`` read positions
  (:meth:`lopa_fed.backbone.FrozenModel.mlm_logits_at`, the current path).
* Median wall seconds over ``--repeats`` steps after one warm-up, the two paths interleaved
  step by step so both see the same load; one torch thread.

    .venv/bin/python bench/mlm_head.py                 # ~1 min

Writes ``bench/results/mlm-head.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Timer, contention_note, load_average, median, metadata, start_load, write_json  # noqa: E402
from lopa_fed.backbone import FrozenModel  # noqa: E402


def step(frozen: FrozenModel, z: torch.Tensor, ids: torch.Tensor, pos: torch.Tensor, full: bool) -> float:
    """Seconds for one forward+backward into ``z`` (B×m×d) through the chosen head path."""
    z = z.detach().requires_grad_(True)
    mask = torch.ones_like(ids)
    split = frozen.mlm_split
    if full:
        frozen.mlm_split = lambda: None
    try:
        with Timer() as t:
            embeds, m = frozen.build_inputs(z, ids, mask)
            logits = frozen.mlm_logits_at(embeds, m, pos + z.shape[1])[:, :2]
            torch.nn.functional.cross_entropy(logits, torch.zeros(len(ids), dtype=torch.long)).backward()
    finally:
        frozen.mlm_split = split
    return t.seconds


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--length", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=9)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    frozen = FrozenModel.load("default", "mlm")
    z = torch.randn(args.batch, 10, frozen.d)
    ids = torch.randint(1000, 20000, (args.batch, args.length))
    pos = torch.randint(0, args.length, (args.batch,))
    ids[torch.arange(args.batch), pos] = frozen.tokenizer.mask_token_id
    load0 = start_load()
    times: dict[str, list[float]] = {"full": [], "read": []}
    for i in range(args.repeats + 1):
        for name in times:
            s = step(frozen, z, ids, pos, full=name == "full")
            if i:
                times[name].append(s)
    res = {k: median(v) for k, v in times.items()}
    out = {
        "meta": metadata(batch=args.batch, length=args.length, repeats=args.repeats,
                         note=contention_note(load0, load_average())),
        "seconds_per_step": res,
        "speedup": res["full"] / res["read"],
    }
    path = write_json("mlm-head", out)
    print(f"full head {res['full']:.3f} s/step, read position only {res['read']:.3f} s/step: "
          f"{out['speedup']:.2f}x -> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
