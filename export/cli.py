"""``lopa-fed export`` and ``lopa-fed infer``.

:func:`register` adds both subcommands to the ``lopa-fed`` parser (entry point ``export`` of
the ``lopa_fed.commands`` group). The handlers raise a :class:`~lopa_fed.errors.LoPAError`
for every user error; ``lopa_fed.cli.main`` prints it as one line on stderr and exits 2.

Examples
--------
::

    lopa-fed train --task sst2 --out runs/sst2-lopa
    lopa-fed export --checkpoint runs/sst2-lopa --out exports/sst2-lopa --int8
    lopa-fed infer --prompt-dir exports/sst2-lopa --text "a gorgeous, witty film" --text "a dull mess"

    lopa-fed simulate --task sst2 --num-clients 4 --out runs/fed
    lopa-fed export --run runs/fed --partition 3 --out exports/fed-client3

``--run runs/fed --partition 3`` exports client 3's personalised generator: the settings in
``runs/fed/run.json``, the last round's global tensors ``runs/fed/global/latest.safetensors``
and the client's private tensors ``runs/fed/private/partition-3-of-4.safetensors``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from lopa_fed.errors import ConfigError

__all__ = ["cmd_export", "cmd_infer", "register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``export`` and ``infer`` subcommands to ``subparsers``."""
    _add_export(subparsers)
    _add_infer(subparsers)


# ---------------------------------------------------------------------------- export
def _add_export(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a trained prompt generator to ONNX (+ int8) with parity checks",
        description="Export a prompt generator (token ids → encoder → heads → gate → Z) to ONNX, from a "
        "checkpoint or from one client of a federated run.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="checkpoint directory (config.json + safetensors) or a train --out directory")
    src.add_argument("--run", help="federated run directory (the --out of lopa-fed simulate / deploy-local)")
    p.add_argument("--partition", type=int, default=None, help="with --run: the client (partition id) to export")
    p.add_argument(
        "--client-state", default=None,
        help="with --checkpoint: safetensors file with one client's private tensors (replace the checkpoint's)",
    )
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--int8", action="store_true", help="also write prompt_generator.int8.onnx (dynamic, per channel)")
    p.add_argument(
        "--int8-mode", choices=("balanced", "ffn-l1", "ffn", "full", "static"), default="balanced",
        help="dynamic per-channel int8 keeping in fp32: balanced (default) the first 2 encoder layers and every FFN "
        "output projection; ffn-l1 the first layer and the FFN outputs; ffn only the FFN outputs; full nothing. "
        "static: QDQ calibrated on real train text (--calibration-examples), prompt heads/gate and FFN outputs in fp32",
    )
    p.add_argument("--calibration-examples", type=int, default=256, metavar="N",
                   help="--int8-mode static: real train examples that calibrate the activation ranges (256)")
    p.add_argument("--web", action="store_true",
                   help="also write web/: a static browser bundle (onnxruntime-web + transformers.js tokenizer, "
                   "no CDN) with the int8 graph when --int8 is given, else fp32")
    p.add_argument("--web-modules", default=None, metavar="DIR",
                   help="node_modules with onnxruntime-web and @huggingface/transformers for --web "
                   "(default: $LOPA_FED_NODE_MODULES, else export/web/node_modules from `npm ci`)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset, 18 (default) to the installed onnx's highest")
    p.add_argument("--force", action="store_true", help="replace an existing export in --out")
    p.add_argument("--task", default=None, help="with --checkpoint: task for the parity check (default: the checkpoint's)")
    p.add_argument("--parity-examples", type=int, default=64, help="real dev examples for the Z parity check (64)")
    p.add_argument(
        "--agreement-examples", type=int, default=None,
        help="dev examples for the prediction-agreement check (default: the whole dev set)",
    )
    p.add_argument("--model", default=None, help="frozen model name/path (default: the recorded one)")
    p.add_argument("--encoder", default=None, help="instance encoder name/path (default: the recorded one)")
    p.add_argument("--json", action="store_true", help="print export.json instead of a summary")
    p.set_defaults(func=cmd_export)


def check_export_args(args: argparse.Namespace) -> None:
    """Refuse option combinations and values ``export`` cannot use (ConfigError)."""
    from .onnx_export import check_opset

    if args.run is not None and args.partition is None:
        raise ConfigError("--run needs --partition: the id of the client whose generator to export")
    if args.run is None and args.partition is not None:
        raise ConfigError("--partition selects a client of a federated run; give the run with --run")
    if args.run is not None and args.client_state is not None:
        raise ConfigError("--client-state goes with --checkpoint; with --run the client's state is read from the run")
    if args.run is not None and args.task is not None:
        raise ConfigError("--task goes with --checkpoint; a federated run's task is read from its run.json")
    if args.parity_examples < 1:
        raise ConfigError(f"--parity-examples must be >= 1, got {args.parity_examples}")
    if args.agreement_examples is not None and args.agreement_examples < 1:
        raise ConfigError(f"--agreement-examples must be >= 1, got {args.agreement_examples}")
    check_opset(args.opset)
    if args.calibration_examples < 1:
        raise ConfigError(f"--calibration-examples must be >= 1, got {args.calibration_examples}")
    if args.web_modules is not None and not args.web:
        raise ConfigError("--web-modules goes with --web")


def cmd_export(args: argparse.Namespace) -> int:
    """Handler of ``lopa-fed export``; returns the exit code (user errors raise a LoPAError)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    check_export_args(args)
    from .pipeline import export_checkpoint, export_run
    from .sidecar import summarize

    t0 = time.perf_counter()
    common: dict[str, Any] = {
        "int8": args.int8, "int8_mode": args.int8_mode, "opset": args.opset, "force": args.force,
        "parity_examples": args.parity_examples, "agreement_examples": args.agreement_examples,
        "model": args.model, "encoder": args.encoder, "web": args.web, "web_modules": args.web_modules,
        "calibration_examples": args.calibration_examples,
    }
    if args.run is not None:
        meta = export_run(args.run, args.partition, args.out, **common)
    else:
        meta = export_checkpoint(args.checkpoint, args.out, client_state=args.client_state, task=args.task, **common)
    if args.json:
        print(json.dumps(meta, indent=2))
    else:
        print(summarize(meta))
        print(f"wrote {Path(args.out) / 'export.json'} in {time.perf_counter() - t0:.1f} s")
    return 0


# ---------------------------------------------------------------------------- infer
def _add_infer(subparsers: argparse._SubParsersAction) -> None:
    q = subparsers.add_parser(
        "infer",
        help="classify text: Z from the ONNX prompt generator, then the frozen model on [Z ; x]",
        description="Compute Z with the torch-free ONNX runtime and classify with the frozen model.",
    )
    q.add_argument("--prompt-dir", required=True, help="export directory written by `lopa-fed export`")
    q.add_argument("--text", action="append", default=[], help="input text (repeatable)")
    q.add_argument("--text-b", action="append", default=[], help="second sentence for pair tasks (repeatable, in order)")
    q.add_argument("--input", default=None, help="file with one input per line (pair tasks: text_a<TAB>text_b)")
    q.add_argument(
        "--dev", type=int, default=None, metavar="N", help="classify the first N real dev examples and report accuracy"
    )
    q.add_argument("--model", default=None, help="frozen model name/path (default: the one recorded in export.json)")
    q.add_argument("--int8", action="store_true", help="use prompt_generator.int8.onnx")
    q.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")
    q.add_argument("--batch-size", type=int, default=32)
    q.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    q.add_argument("--host", default=None, metavar="URL",
                   help="send only Z and the text to a model host (`lopa-fed serve`) instead of loading the frozen model")
    q.add_argument("--api-key", default=None, help="bearer token for --host")
    q.set_defaults(func=cmd_infer)


def check_infer_args(args: argparse.Namespace) -> None:
    """Refuse values ``infer`` cannot use (ConfigError)."""
    for flag, value in (("--batch-size", args.batch_size), ("--threads", args.threads), ("--dev", args.dev)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} must be >= 1, got {value}")
    for i, t in enumerate(args.text, 1):
        if not t.strip():
            raise ConfigError(f"--text number {i} is empty; give the text to classify")
    if args.text_b and len(args.text_b) != len(args.text):
        raise ConfigError(f"got {len(args.text)} --text but {len(args.text_b)} --text-b; give one --text-b per --text")


def read_inputs(args: argparse.Namespace) -> list:
    """``--text`` (with ``--text-b``) and ``--input`` lines as texts or ``(a, b)`` pairs."""
    texts: list = [(t, args.text_b[i]) if args.text_b else t for i, t in enumerate(args.text)]
    if args.input:
        path = Path(args.input)
        if not path.is_file():
            raise ConfigError(f"--input file {path} does not exist")
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                a, sep, b = line.partition("\t")
                texts.append((a, b) if sep else a)
    return texts


def cmd_infer(args: argparse.Namespace) -> int:
    """Handler of ``lopa-fed infer``; returns the exit code (user errors raise a LoPAError)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    check_infer_args(args)
    texts = read_inputs(args)
    if not texts and args.dev is None:
        raise ConfigError("nothing to classify: pass --text, --input or --dev N")
    from .host import ModelHost
    from .runtime import PromptRuntime

    rt = PromptRuntime(args.prompt_dir, threads=args.threads, int8=args.int8)
    if args.host:
        labels, task, rows, dev = _infer_remote(args, rt, texts)
    else:
        host = ModelHost.from_export(args.prompt_dir, model=args.model)
        labels, task = list(host.task.label_words), host.task
        rows = _classify(host, rt, texts, args.batch_size) if texts else []
        dev = _classify_dev(host, rt, args.dev, args.batch_size) if args.dev is not None else []
    _print_rows(labels, rows + dev, args.json)
    if args.dev is not None:
        acc = sum(r["index"] == r["gold"] for r in dev) / max(len(dev), 1)
        print(
            f"dev accuracy ({task.name}, first {len(dev)} examples): {acc:.4f}",
            file=sys.stderr if args.json else sys.stdout,
        )
    return 0


def _infer_remote(args: argparse.Namespace, rt: Any, texts: list) -> tuple[list[str], Any, list, list]:
    """Z on this device, the frozen model on the host: only Z and the text leave the device."""
    from lopa_fed.tasks import get_task

    from .host import embedding_hash_of
    from .runtime import read_sidecar
    from .serve.client import classify_remote

    meta = read_sidecar(args.prompt_dir)
    task = get_task(meta.get("task") or "sst2")
    z_hash = embedding_hash_of(meta, args.prompt_dir)  # the host refuses Z made for another frozen model
    examples = task.read("dev", limit=args.dev) if args.dev is not None else []
    dev_texts = [(ex.text_a, ex.text_b) if ex.text_b else ex.text_a for ex in examples]
    everything = texts + dev_texts
    answers = classify_remote(args.host, everything, rt.prompts(everything), z_hash=z_hash, api_key=args.api_key) if everything else []
    out = [{"text": t, "label": a["label"], "index": a["index"]} for t, a in zip(everything, answers)]
    for r, ex in zip(out[len(texts):], examples):
        r["gold"] = task.label_of(ex)
    return list(task.label_words), task, out[: len(texts)], out[len(texts):]


def _classify(host: Any, rt: Any, texts: list, batch_size: int) -> list[dict[str, Any]]:
    preds = host.predict(host.encode(texts), rt.prompts, batch_size)
    return [{"text": t, "label": host.label_name(p), "index": int(p)} for t, p in zip(texts, preds)]


def _classify_dev(host: Any, rt: Any, limit: int, batch_size: int) -> list[dict[str, Any]]:
    examples = host.task.read("dev", limit=limit)
    data = host.task.encode(examples, host.model.frozen, host.max_length)
    preds = host.predict(data, rt.prompts, batch_size)
    return [
        {"text": it.enc_text, "label": host.label_name(p), "index": int(p), "gold": host.task.label_of(ex)}
        for it, ex, p in zip(data.items, examples, preds)
    ]


def _print_rows(labels: list[str], rows: list[dict[str, Any]], as_json: bool) -> None:
    for r in rows:
        if as_json:
            print(json.dumps(r, ensure_ascii=False))
            continue
        t = r["text"] if isinstance(r["text"], str) else " ||| ".join(x for x in r["text"] if x)
        gold = f"  (gold {labels[r['gold']]})" if "gold" in r else ""
        print(f"{r['label']}\t{t[:100]}{gold}")
