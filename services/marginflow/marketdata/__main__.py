"""Entry point: ``python -m marginflow.marketdata [--replay FILE] [--speed max|N] [--universe FILE]``.

Command-line options override the matching environment variables (see settings.py).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys


def add_source_options(parser: argparse.ArgumentParser) -> None:
    """--replay / --speed / --universe, shared with the supervisor (``make run REPLAY= SPEED=``)."""
    parser.add_argument("--replay", help="CSV of ticks to replay instead of the simulator")
    parser.add_argument("--speed", help="'max' or a multiple of event time (default 1)")
    parser.add_argument("--universe", help="instrument universe TOML file")


def source_env(args: argparse.Namespace) -> dict[str, str]:
    """The environment variables the source options stand for (paths made absolute)."""
    env: dict[str, str] = {}
    if args.replay:
        env["MF_MD_SOURCE"] = "replay"
        env["MF_MD_REPLAY_FILE"] = str(pathlib.Path(args.replay).resolve())
    if args.speed:
        env["MF_MD_SPEED"] = args.speed
    if args.universe:
        env["MF_UNIVERSE_FILE"] = str(pathlib.Path(args.universe).resolve())
    return env


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="marginflow.marketdata", description=__doc__)
    add_source_options(parser)
    parser.add_argument("--seed", help="simulator seed")
    parser.add_argument("--exit-at-end", action="store_true", help="exit when the replay ends")
    args = parser.parse_args(argv)
    os.environ.update(source_env(args))
    if args.seed:
        os.environ["MF_MD_SIM_SEED"] = args.seed
    if args.exit_at_end:
        os.environ["MF_MD_EXIT_AT_END"] = "true"
    from marginflow.marketdata.service import run

    run()


if __name__ == "__main__":
    main(sys.argv[1:])
