"""``taxi-hpo bench``: placeholder wiring, filled in by the benchmark work (issue 3)."""

from __future__ import annotations

import argparse


def add_parser(sub, add_search_flags) -> None:
    p = sub.add_parser("bench", help="benchmark layouts against the sequential reference search")
    add_search_flags(p)


def main(args: argparse.Namespace) -> int:
    raise SystemExit("taxi-hpo bench is not built yet")
