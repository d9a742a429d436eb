"""``taxi-hpo serve``: placeholder wiring, filled in by the scheduled-search work (issue 5)."""

from __future__ import annotations

import argparse


def add_parser(sub, add_search_flags) -> None:
    p = sub.add_parser("serve", help="serve the search as a scheduled Prefect deployment")
    add_search_flags(p)


def main(args: argparse.Namespace) -> int:
    raise SystemExit("taxi-hpo serve is not built yet")
