"""`llmlab demo`: placeholder until the pretraining issue lands."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the main job, end to end")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return 0
