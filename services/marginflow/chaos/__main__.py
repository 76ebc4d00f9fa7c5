"""``python -m marginflow.chaos [--accounts N] [--rate R] [--seconds S] [--small | --faults F,…] [--report FILE]``."""

from __future__ import annotations

import argparse
import pathlib
import sys

from marginflow.chaos.application import Options, parse_faults
from marginflow.chaos.service import platform_services, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m marginflow.chaos", description=__doc__)
    parser.add_argument("--accounts", type=int, default=100_000, help="demo-book accounts (default 100,000)")
    parser.add_argument("--rate", type=float, default=1000.0, help="generated fills per second (default 1,000)")
    parser.add_argument("--seconds", type=float, default=3600.0, help="time budget of the whole run")
    parser.add_argument("--steady-seconds", type=float, default=10.0, help="load between faults")
    parser.add_argument("--sigstop-seconds", type=float, default=30.0, help="how long a service stays stopped")
    parser.add_argument("--small", action="store_true", help="one kill -9 per service and one Redis flush")
    parser.add_argument("--faults", help="only these faults, in this order, comma-separated: kill:<service>, "
                        "sigstop:<service>, kafka_restart, redis_flush, redis_restart")
    parser.add_argument("--report", type=pathlib.Path, help="write the results table as Markdown here")
    parser.add_argument("--run-dir", type=pathlib.Path, help="directory for the run's Kafka, Redis and logs "
                        "(default: a new temporary one, removed after a clean run)")
    parser.add_argument("--keep-run-dir", action="store_true")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    if args.accounts < 1 or args.rate <= 0 or args.seconds <= 0:
        parser.error("--accounts, --rate and --seconds must be positive")
    options = Options(accounts=args.accounts, rate=args.rate, budget_seconds=args.seconds,
                      steady_seconds=args.steady_seconds, sigstop_seconds=args.sigstop_seconds, seed=args.seed)
    chosen = None
    if args.faults:
        try:
            chosen = parse_faults(args.faults, platform_services())
        except ValueError as exc:
            parser.error(str(exc))
    return run(options, args.small, args.report, args.run_dir, args.keep_run_dir, chosen)


if __name__ == "__main__":
    sys.exit(main())
