"""Print (and optionally write) the zoo's model table: measured params/FLOPs next to the papers' claims.

Usage: python tools/model_table.py [--out table.md] [--pattern 'dna_*'] [--no-onnx] [--no-search]
(the same as ``zoo demo``)
"""

from __future__ import annotations

import argparse
import sys

from zoo._cli_errors import run_cli
from zoo.cli import add_demo_arguments, run_demo_from_args


def main(argv: list[str] | None = None) -> int:
    """Parse the options and print the table; a user error prints one line and returns 2."""
    parser = argparse.ArgumentParser(prog='model_table.py', description=__doc__.splitlines()[0])
    add_demo_arguments(parser)
    return run_cli(lambda: run_demo_from_args(parser.parse_args(argv)), prog=parser.prog)


if __name__ == '__main__':
    sys.exit(main())
