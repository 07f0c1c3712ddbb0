"""Helpers shared by the export tests (not a test module): the CLI runner and tiny model directories."""

from __future__ import annotations

import argparse
import contextlib
import io
from pathlib import Path

import torch

from export import cli as export_cli
from lopa_fed import weights
from lopa_fed.backbone import FrozenModel
from lopa_fed.config import LoPAConfig
from lopa_fed.encoder import InstanceEncoder
from lopa_fed.errors import LoPAError
from lopa_fed.model import PromptedModel


def run_cli(argv: list[str]) -> int:
    """``lopa-fed <argv>`` with the export commands, failing exactly as ``lopa_fed.cli.main`` does.

    The parser holds only :func:`export.cli.register`'s commands (so it works before the entry
    points are installed); a :class:`LoPAError` goes through ``lopa_fed.cli.fail`` (one line on
    stderr, exit code 2) and an argparse error exits 2 as usual.
    """
    from lopa_fed.cli import fail

    parser = argparse.ArgumentParser(prog="lopa-fed")
    export_cli.register(parser.add_subparsers(dest="command", required=True))
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        return int(args.func(args) or 0)
    except LoPAError as exc:
        return fail(str(exc))


def run_cli_quiet(argv: list[str]) -> tuple[int, str]:
    """:func:`run_cli` with stdout captured: ``(exit code, stdout)``."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = run_cli(argv)
    return code, buf.getvalue()


def perturb(pm: PromptedModel, seed: int = 0) -> None:
    """Give every trainable tensor non-trivial values (an untrained head makes Z near-constant)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in pm.named_trainable().values():
            p.add_(torch.randn(p.shape, generator=g) * 0.5)


def save_tiny_models(root: Path) -> tuple[str, str]:
    """Directories of a tiny random BERT encoder (h=32) and frozen model (d=16) with MiniLM's tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    tok = AutoTokenizer.from_pretrained(weights.resolve("default").directory)
    torch.manual_seed(0)
    enc_dir, frz_dir = root / "tiny-encoder", root / "tiny-frozen"
    BertModel(
        BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    ).save_pretrained(enc_dir)
    BertModel(
        BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    ).save_pretrained(frz_dir)
    tok.save_pretrained(enc_dir)
    tok.save_pretrained(frz_dir)
    return str(enc_dir), str(frz_dir)


def tiny_lopa_classifier(root: Path, perturb_seed: int) -> PromptedModel:
    """A LoPA classifier (m=3, r=2, hidden 8) on :func:`save_tiny_models`' models, perturbed, in eval mode."""
    enc_dir, frz_dir = save_tiny_models(root)
    torch.manual_seed(0)
    pm = PromptedModel(
        FrozenModel.load(frz_dir, "classifier"), LoPAConfig("lopa", m=3, r=2, hidden=8, zs_init="normal"),
        num_labels=2, encoder=InstanceEncoder.load(enc_dir),
    )
    perturb(pm, perturb_seed)
    return pm.eval()


def save_tiny_causal(root: Path, seed: int = 5) -> str:
    """Directory of a tiny random Llama causal LM (d=32) with MiniLM's tokenizer."""
    from transformers import AutoTokenizer

    from conftest import tiny_llama

    d = root / "tiny-causal"
    tiny_llama(seed=seed).save_pretrained(d)
    tok = AutoTokenizer.from_pretrained(weights.resolve("default").directory)
    tok.eos_token = "[SEP]"  # code-task encoding ends every answer with eos
    tok.save_pretrained(d)
    return str(d)
