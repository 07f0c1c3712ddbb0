"""``lopa-fed export`` and ``lopa-fed infer``.

The main CLI (``lopa_fed.cli``) calls :func:`register` to add both subcommands. The module
also runs on its own: ``python -m export.cli export ...``.

Examples
--------
::

    lopa-fed export --checkpoint runs/sst2-lopa/checkpoint --out exports/sst2-lopa --int8
    lopa-fed export --checkpoint runs/fed/checkpoint --client-state runs/fed/clients/3.safetensors --out exports/c3
    lopa-fed infer --prompt-dir exports/sst2-lopa --text "a gorgeous, witty film" --text "a dull mess"
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def _eprint(msg: str) -> None:
    print(msg, file=sys.stderr)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``export`` and ``infer`` subcommands to ``subparsers``."""
    p = subparsers.add_parser(
        "export",
        help="export a trained prompt generator to ONNX (+ int8) with parity checks",
        description="Export a checkpoint's prompt generator (token ids → encoder → heads → gate → Z) to ONNX.",
    )
    p.add_argument("--checkpoint", required=True, help="checkpoint directory (config.json + safetensors)")
    p.add_argument(
        "--client-state",
        default=None,
        help="safetensors file with one federated client's private tensors (replace the checkpoint's)",
    )
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument(
        "--int8", action="store_true", help="also write prompt_generator.int8.onnx (dynamic, per channel)"
    )
    p.add_argument(
        "--int8-mode",
        choices=("balanced", "full"),
        default="balanced",
        help="balanced (default): first 2 encoder layers and FFN output projections stay fp32; full: quantise all",
    )
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    p.add_argument("--force", action="store_true", help="overwrite an existing export in --out")
    p.add_argument("--task", default=None, help="task for the parity check (default: the checkpoint's task)")
    p.add_argument(
        "--parity-examples", type=int, default=64, help="real dev examples for the Z parity check (64)"
    )
    p.add_argument(
        "--agreement-examples",
        type=int,
        default=None,
        help="dev examples for the prediction-agreement check (default: the whole dev set)",
    )
    p.add_argument("--model", default=None, help="frozen model name/path (default: the checkpoint's)")
    p.add_argument("--encoder", default=None, help="instance encoder name/path (default: the checkpoint's)")
    p.add_argument("--json", action="store_true", help="print export.json instead of a summary")
    p.set_defaults(func=cmd_export)

    q = subparsers.add_parser(
        "infer",
        help="classify text: Z from the ONNX prompt generator, then the frozen model on [Z ; x]",
        description="Compute Z with the torch-free ONNX runtime and classify with the frozen model.",
    )
    q.add_argument("--prompt-dir", required=True, help="export directory written by `lopa-fed export`")
    q.add_argument("--text", action="append", default=[], help="input text (repeatable)")
    q.add_argument(
        "--text-b", action="append", default=[], help="second sentence for pair tasks (repeatable, in order)"
    )
    q.add_argument(
        "--input", default=None, help="file with one input per line (pair tasks: text_a<TAB>text_b)"
    )
    q.add_argument(
        "--dev",
        type=int,
        default=None,
        metavar="N",
        help="classify the first N real dev examples and report accuracy",
    )
    q.add_argument(
        "--model", default=None, help="frozen model name/path (default: the one recorded in export.json)"
    )
    q.add_argument("--int8", action="store_true", help="use prompt_generator.int8.onnx")
    q.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")
    q.add_argument("--batch-size", type=int, default=32)
    q.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    q.set_defaults(func=cmd_infer)


# ---------------------------------------------------------------------------- export
def cmd_export(args: argparse.Namespace) -> int:
    """Handler of ``lopa-fed export``; returns the exit code."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from lopa_fed.checkpoint import CheckpointError
    from lopa_fed.config import ConfigError

    from .export import ExportError, export_checkpoint, summarize

    t0 = time.perf_counter()
    try:
        meta = export_checkpoint(
            args.checkpoint,
            args.out,
            client_state=args.client_state,
            int8=args.int8,
            int8_mode=args.int8_mode,
            opset=args.opset,
            force=args.force,
            task=args.task,
            parity_examples=args.parity_examples,
            agreement_examples=args.agreement_examples,
            model=args.model,
            encoder=args.encoder,
        )
    except (ExportError, CheckpointError, ConfigError, KeyError, FileNotFoundError) as exc:
        _eprint(f"lopa-fed export: error: {exc}")
        return 1
    if args.json:
        print(json.dumps(meta, indent=2))
    else:
        print(summarize(meta))
        print(f"wrote {Path(args.out) / 'export.json'} in {time.perf_counter() - t0:.1f} s")
    return 0


# ---------------------------------------------------------------------------- infer
def _read_inputs(args: argparse.Namespace) -> list:
    texts: list = []
    if args.text_b and len(args.text_b) != len(args.text):
        raise ValueError(
            f"got {len(args.text)} --text but {len(args.text_b)} --text-b; give one --text-b per --text"
        )
    for i, t in enumerate(args.text):
        texts.append((t, args.text_b[i]) if args.text_b else t)
    if args.input:
        path = Path(args.input)
        if not path.is_file():
            raise FileNotFoundError(f"--input file {path} does not exist")
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                a, sep, b = line.partition("\t")
                texts.append((a, b) if sep else a)
    return texts


def cmd_infer(args: argparse.Namespace) -> int:
    """Handler of ``lopa-fed infer``; returns the exit code."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from .runtime import ExportFormatError, PromptRuntime

    try:
        rt = PromptRuntime(args.prompt_dir, threads=args.threads, int8=args.int8)
        texts = _read_inputs(args)
        if not texts and args.dev is None:
            raise ValueError("nothing to classify: pass --text, --input or --dev N")
        from .host import ModelHost

        host = ModelHost.from_export(args.prompt_dir, model=args.model)
        rows = []
        if texts:
            data = host.encode(texts)
            preds = host.predict(data, rt.prompts, args.batch_size)
            rows += [{"text": t, "label": host.label_name(p), "index": int(p)} for t, p in zip(texts, preds)]
        if args.dev is not None:
            from lopa_fed.data import encode_examples

            examples = host.task.read("dev", limit=args.dev)
            data = encode_examples(examples, host.task, host.model.frozen, host.max_length)
            preds = host.predict(data, rt.prompts, args.batch_size)
            acc = float(sum(int(p) == ex.label for p, ex in zip(preds, examples)) / max(len(examples), 1))
            rows += [
                {
                    "text": host.task.plain_text(ex),
                    "label": host.label_name(p),
                    "index": int(p),
                    "gold": ex.label,
                }
                for ex, p in zip(examples, preds)
            ]
    except (ExportFormatError, ValueError, TypeError, KeyError, FileNotFoundError) as exc:
        _eprint(f"lopa-fed infer: error: {exc}")
        return 1
    if args.json:
        for r in rows:
            print(json.dumps(r, ensure_ascii=False))
    else:
        for r in rows:
            t = r["text"] if isinstance(r["text"], str) else " ||| ".join(x for x in r["text"] if x)
            gold = f"  (gold {host.label_name(r['gold'])})" if "gold" in r else ""
            print(f"{r['label']}\t{t[:100]}{gold}")
    if args.dev is not None:
        print(
            f"dev accuracy ({host.task.name}, first {len(examples)} examples): {acc:.4f}",
            file=sys.stderr if args.json else sys.stdout,
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point: ``python -m export.cli {export,infer} ...``."""
    parser = argparse.ArgumentParser(prog="lopa-fed")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
