"""The ``adps`` command line: one module per subcommand, no logic of its own.

Each command module exposes ``add_parser(subparsers)`` (which sets ``func`` on its parser) so
commands stay independent; user errors (:class:`adps.AdpsError`) print one clear line and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings

from adps.errors import AdpsError
from adps.version import __version__

COMMANDS = (
    "info",
    "demo",
    "train",
    "test",
    "benchmark",
    "predict",
    "calibrate",
    "update",
    "report",
    "export",
    "serve",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adps",
        description="Visual anomaly detection with Asymmetric Distillation Post-Segmentation. "
        "Train on normal images only; get anomaly maps, scores and decisions.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Start with `adps demo`; `adps COMMAND --help` explains each command.",
    )
    parser.add_argument("--version", action="version", version=f"adps {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"adps.cli.{name}")
        module.add_parser(sub)
    return parser


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"adps: warning: {message}\n"  # for users: the message, not our source line


def main(argv: list[str] | None = None) -> int:
    warnings.formatwarning = _one_line_warning
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except AdpsError as exc:
        print(f"adps {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"adps {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
