"""Command-line interface: ``mrcnn-ref {train,evaluate,predict}``."""
from __future__ import annotations

import argparse
import sys

from . import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mrcnn-ref",
        description="Mask R-CNN from scratch in NumPy: train, evaluate and predict.",
    )
    parser.add_argument("--version", action="version", version=f"mrcnn-ref {__version__}")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
