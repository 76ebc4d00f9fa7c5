"""Run every benchmark: ``python -m bench [name ...]`` (``make bench``).

Each ``bench/bench_<name>.py`` runs in its own process (so one's memory and threads do not skew
another's) and prints its own table; figures are ratios against a baseline measured in the same
process run. Kafka and Redis come from KAFKA_BOOTSTRAP_SERVERS / REDIS_URL.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys
import time


def main(argv: list[str]) -> int:
    here = pathlib.Path(__file__).parent
    names = sorted(p.stem[len("bench_"):] for p in here.glob("bench_*.py"))
    wanted = argv or names
    unknown = set(wanted) - set(names)
    if unknown:
        print(f"unknown benchmarks: {', '.join(sorted(unknown))}; have: {', '.join(names)}", file=sys.stderr)
        return 2
    failed = []
    for name in wanted:
        print(f"\n=== bench {name} ===", flush=True)
        start = time.monotonic()
        rc = subprocess.call([sys.executable, "-m", f"bench.bench_{name}"])
        print(f"=== {name}: exit {rc}, {time.monotonic() - start:.0f} s ===", flush=True)
        if rc != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
