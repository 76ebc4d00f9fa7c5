"""Liquidity add-on through the depth curve: ``python -m bench.bench_depth_addon`` (no Kafka needed).

The margin engine of ``bench.bench_margin`` (100,000 accounts / 1,000,000 positions, the same risk version)
builds two models of the same market: one without depth curves (the core's spread-and-depth add-on) and one
with a seven-distance curve on every instrument (the add-on through the book). Their full computations
(the model's ``compute``: core, contingency, add-ons) are timed interleaved, five pairs, medians; the ratio is
the cost of the curves. The core's ``depth_distance`` and its numpy twin are timed on the same positions.
"""

from __future__ import annotations

import dataclasses
import os
import time

import numpy as np

from bench.bench_margin import make_books, risk_version
from marginflow.core import ccore, reference
from marginflow.margin.service import MarginApp
from marginflow.margin.settings import MarginSettings
from marginflow.shared.config import load
from marginflow.shared.depthcurve import DEFAULT_BUCKETS_BPS, DepthCurve


def median_ms(runs: list[float]) -> float:
    return float(np.median(runs)) * 1e3


def main() -> int:
    env = dict(os.environ, MF_MARGIN_GRPC_PORT="0", MF_MARGIN_METRICS_PORT="0", MF_LOG_JSON="false",
               MF_MARGIN_MODEL_REFRESH_MS="0", MF_LOG_LEVEL="WARNING", MF_MARGIN_PUBLISH_MAX_INTERVAL_MS="3600000")
    app = MarginApp(load(MarginSettings, env)).start(serve_grpc=False, serve_http_metrics=False, consume=False)
    try:
        engine = app.engine
        engine.apply_snapshots(make_books(engine, 100_000, 10))
        version = risk_version(list(engine.instruments.underlyings))
        n = engine.instruments.n
        # contracts within 5, 10, 25, 50, 100, 200, 500 bps: the bench's sizes (lognormal, median 1) walk a
        # few buckets, the largest beyond the curve
        curve = DepthCurve(DEFAULT_BUCKETS_BPS, (1.0, 3.0, 7.0, 15.0, 30.0, 50.0, 80.0),
                           (1.0, 2.0, 6.0, 10.0, 20.0, 40.0, 60.0))
        models = {}
        for i, name in enumerate(("no curves", "curves")):
            engine.market.depth_curve = [curve if name == "curves" else None] * n
            engine.apply_risk_params(dataclasses.replace(version, version=version.version + 1 + i))
            models[name] = engine.model.core
        f = engine.flat
        load_before = os.getloadavg()
        runs: dict[str, list[float]] = {name: [] for name in models}
        for _ in range(5):
            for name, model in models.items():
                t = time.perf_counter()
                model.compute(f.indptr, f.instrument, f.size, f.isolated, n_threads=2)
                runs[name].append(time.perf_counter() - t)
        depth = models["curves"].depth
        args = (f.instrument, f.size, depth.points_share, depth.points_bps, depth.last_contracts, depth.last_bps,
                depth.floor_bps, depth.rules.uncovered_penalty)
        kernel: dict[str, list[float]] = {"c": [], "twin": []}
        for _ in range(5):
            for name, impl in (("c", ccore), ("twin", reference)):
                t = time.perf_counter()
                impl.depth_distance(*args)
                kernel[name].append(time.perf_counter() - t)
        plain, curves = median_ms(runs["no curves"]), median_ms(runs["curves"])
        print(f"accounts {len(engine.row_of):,}, positions {engine.n_positions():,}, instruments {n}; "
              f"load average at start {' '.join(f'{x:.2f}' for x in load_before)}")
        print(f"model compute without curves {plain:.0f} ms, with a curve on every instrument {curves:.0f} ms")
        print(f"RATIO with / without curves: {curves / plain:.2f}×")
        c_ms, twin_ms = median_ms(kernel["c"]), median_ms(kernel["twin"])
        print(f"depth_distance over {f.size.shape[0]:,} positions: C {c_ms:.1f} ms, numpy twin {twin_ms:.1f} ms "
              f"({twin_ms / c_ms:.1f}× the C)")
        print(f"load average at end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    finally:
        app.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
