"""Dev accuracy against training steps: does more training close LoPA's gap to PT and LoRA?

Reads the causal quality result files of several budgets (each method at the point the 125-step
budget selected, so only the number of steps differs) and writes, without training anything,

* a table: each method's SST-2 dev accuracy (mean ± std over seeds) per budget, and LoPA's gap to
  PT and to LoRA r=16 with the standard error of a difference of two means;
* ``quality-causal-steps.png``: accuracy against steps per method, and the gaps against steps;
* ``quality-causal-steps.json``: the same numbers, with the source files' provenance.

    .venv/bin/python bench/quality_steps.py      # the committed 125-, 250- and 500-step files
    .venv/bin/python bench/quality_steps.py --files bench/results/quality-causal.json,bench/results/quality-causal-medium.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common  # noqa: E402
from bench.quality_causal import COLOR, LABEL, METHODS, SELECT_TASK  # noqa: E402

DEFAULT_FILES = ("quality-causal.json", "quality-causal-medium.json", "quality-causal-large.json")
GAPS = (("lopa", "pt"), ("lopa", "lora16"))
GAP_STYLE = {"lopa - pt": ("C0", "LoPA - PT"), "lopa - lora16": ("C3", "LoPA - LoRA r=16")}


def load_rows(paths: list[Path]) -> tuple[dict[str, list[dict]], list[dict]]:
    """``{method: [{steps, mean, std, n, devs}, ...]}`` sorted by steps, and each file's provenance.

    Raises ``ValueError`` (one line) for a file that is missing, unreadable or holds no SST-2 main rows.
    """
    rows: dict[str, list[dict]] = {}
    sources = []
    for p in paths:
        try:
            data = json.loads(p.read_text())
            ms = data["summary"]["main"][SELECT_TASK]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{p}: not a causal quality result with SST-2 main rows ({type(exc).__name__}: {exc})") from None
        for m, x in ms.items():
            rows.setdefault(m, []).append({k: x[k] for k in ("steps", "mean", "std", "n", "devs", "init", "lr")})
        sources.append({"file": p.name, "budget": data.get("protocol", {}).get("budget"),
                        "commit": data.get("meta", {}).get("commit"), "date": data.get("meta", {}).get("date")})
    return {m: sorted(v, key=lambda r: r["steps"]) for m, v in rows.items()}, sources


def gaps(rows: dict[str, list[dict]]) -> list[dict]:
    """LoPA − PT and LoPA − LoRA r=16 at every step count both have, with the standard error of the difference."""
    out = []
    for a, b in GAPS:
        other = {r["steps"]: r for r in rows.get(b, [])}
        for r in rows.get(a, []):
            o = other.get(r["steps"])
            if o is None:
                continue
            se = math.sqrt(r["std"] ** 2 / r["n"] + o["std"] ** 2 / o["n"]) if min(r["n"], o["n"]) > 1 else None
            out.append({"pair": f"{a} - {b}", "steps": r["steps"], "diff": r["mean"] - o["mean"], "se": se,
                        "n": [r["n"], o["n"]]})
    return out


def render(rows: dict[str, list[dict]], gp: list[dict]) -> str:
    steps = sorted({r["steps"] for v in rows.values() for r in v if r["steps"] > 0})
    table = []
    for m in [m for m in METHODS if m in rows and m != "zero-shot"]:
        by = {r["steps"]: r for r in rows[m]}
        cells = [f"{by[s]['mean']:.1f} ± {by[s]['std']:.1f} (n={by[s]['n']})" if s in by else "–" for s in steps]
        table.append([LABEL.get(m, m), *cells])
    lines = [common.markdown_table(["method", *(f"dev, {s} steps" for s in steps)], table), ""]
    if "zero-shot" in rows:
        lines.insert(0, f"zero-shot (no tuning, 0 steps): {rows['zero-shot'][0]['mean']:.1f}\n")
    for g in gp:
        se = f" ± {g['se']:.1f} (s.e.)" if g["se"] is not None else " (1 seed)"
        lines.append(f"{g['pair']} at {g['steps']} steps: {g['diff']:+.1f}{se}")
    return "\n".join(lines)


def plot(rows: dict[str, list[dict]], gp: list[dict], out: Path, name: str) -> None:
    plt = common.plt()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 5))
    for m in [m for m in METHODS if m in rows and m != "zero-shot"]:
        v = rows[m]
        ax.errorbar([r["steps"] for r in v], [r["mean"] for r in v], yerr=[r["std"] for r in v], marker="o",
                    capsize=3, color=COLOR.get(m, "grey"), label=LABEL.get(m, m))
    if "zero-shot" in rows:
        ax.axhline(rows["zero-shot"][0]["mean"], color="k", ls=":", label=LABEL["zero-shot"])
    ax.set_xscale("log", base=2)
    ax.set_xlabel("optimiser steps (batch 16; one epoch over 16 × steps examples)")
    ax.set_ylabel("SST-2 dev accuracy % (full dev; mean ± std over seeds)")
    ax.set_title("SmolLM2-135M causal verbalizer: score against training steps")
    ax.legend(fontsize=8)
    for pair, (c, label) in GAP_STYLE.items():
        g = [x for x in gp if x["pair"] == pair]
        if g:
            bx.errorbar([x["steps"] for x in g], [x["diff"] for x in g], yerr=[x["se"] or 0 for x in g], marker="o",
                        capsize=3, color=c, label=f"{label} (± s.e.)")
    bx.axhline(0, color="k", lw=1)
    bx.axhline(5, color="C0", ls=":", lw=1, label="goal: LoPA ≥ PT + 5")
    bx.set_xscale("log", base=2)
    bx.set_xlabel("optimiser steps")
    bx.set_ylabel("difference of dev accuracy, points")
    bx.set_title("LoPA's gap against steps")
    bx.legend(fontsize=8)
    ticks = sorted({r["steps"] for v in rows.values() for r in v if r["steps"] > 0})
    for a in (ax, bx):
        a.set_xticks(ticks, [str(t) for t in ticks])
        a.minorticks_off()
    common.save_fig(fig, name, out)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", default=None,
                    help="comma-separated result files (default: " + ", ".join(DEFAULT_FILES) + " in --out-dir, those present)")
    ap.add_argument("--out-dir", default=str(common.RESULTS), help="where the default files are and the output goes")
    ap.add_argument("--name", default="quality-causal-steps", help="output NAME.json / NAME.png")
    args = ap.parse_args(argv)
    out = Path(args.out_dir)
    paths = [Path(f) for f in args.files.split(",")] if args.files else [out / f for f in DEFAULT_FILES if (out / f).is_file()]
    if len(paths) < 2:
        ap.error(f"need at least two result files of different budgets; found {len(paths)} (see --files)")
    try:
        rows, sources = load_rows(paths)
    except ValueError as exc:
        ap.error(str(exc))
    gp = gaps(rows)
    data = {"meta": common.metadata(), "sources": sources, "rows": rows, "gaps": gp}
    common.write_json(args.name, data, out)
    print(render(rows, gp))
    plot(rows, gp, out, args.name)
    return data


if __name__ == "__main__":
    main()
