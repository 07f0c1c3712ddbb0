"""``lopa-fed``: the command line, and the one way it fails.

Subcommands are plugins: every entry point in the ``lopa_fed.commands`` group (see
``pyproject.toml``) is a ``register(subparsers)`` function that adds its commands.
The core registers ``train`` and ``evaluate`` (:mod:`lopa_fed.commands`); ``server``
adds ``simulate`` and ``deploy-local``; ``export`` adds ``export`` and ``infer``. So
this package never imports the packages that stand on it.

Every user error is a :class:`~lopa_fed.errors.LoPAError`: it is printed as one line
on stderr and the command exits with code 2. ``argparse`` usage errors also exit 2.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import sys

from .errors import LoPAError

#: Entry-point group of ``lopa-fed`` subcommands.
COMMAND_GROUP = "lopa_fed.commands"

EPILOG = """\
models: 'default' = the task's default (all-MiniLM-L6-v2 for GLUE, SmolLM2-135M-Instruct for code
tasks), 'minilm', 'smollm2', a .gguf file, a local model directory, or a hub id (online only).
data:   --data-dir, else $LOPA_FED_DATA_DIR, else ../shared/data beside the repo.
errors: a bad value, file or checkpoint prints one line on stderr and exits with code 2.
"""


def build_parser() -> argparse.ArgumentParser:
    """The ``lopa-fed`` parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="lopa-fed",
        description="Federated, on-device personalisation of frozen foundation models with LoPA.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    found = sorted(importlib.metadata.entry_points(group=COMMAND_GROUP), key=lambda e: e.name)
    if not found:
        print("lopa-fed: no subcommands are registered: install the package (pip install -e .)", file=sys.stderr)
    for ep in found:
        try:
            ep.load()(sub)
        except ImportError as exc:  # an optional package (e.g. flwr, onnx) is not installed
            print(f"lopa-fed: skipping the {ep.name!r} commands ({exc})", file=sys.stderr)
    return parser


def fail(message: str) -> int:
    """Print ``message`` as the one error line on stderr; returns exit code 2."""
    first = " ".join(str(message).split()) or "error"
    print(f"lopa-fed: error: {first}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``lopa-fed`` command; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except LoPAError as exc:
        return fail(str(exc))
    except KeyboardInterrupt:
        print("lopa-fed: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
