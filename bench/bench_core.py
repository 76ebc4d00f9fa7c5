"""Benchmark of the margin core: the C extension against its numpy/scipy twin, in one run.

    .venv/bin/python bench/bench_core.py            # full size (make bench-core)
    .venv/bin/python bench/bench_core.py --smoke    # tiny, every entry point (valgrind run)

Full size: 100,000 accounts, 1,000,000 positions (10 % isolated) over 200 instruments on 10
underlyings (perps, futures, options), 27-point grid + 8 tail moves + 1,000 FHS scenarios.
Timings are the median of repeated runs (the twin's full recalculation: one run, it takes
seconds). GFLOP/s counts the multiply-adds of the aggregation only:
2 x (cross positions) x (grid + tail + FHS scenarios).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import numpy as np

from marginflow.core import ccore, reference
from marginflow.core.synthetic import make_market, make_portfolio, make_valuation


def timed(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def per_call(fn, n: int) -> float:
    """Median over 5 batches of the mean time of one call, seconds."""
    batches = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        batches.append((time.perf_counter() - t0) / n)
    return statistics.median(batches)


def max_rel_diff(a: np.ndarray, b: np.ndarray) -> float:
    scale = max(1.0, float(np.max(np.abs(b)))) if b.size else 1.0
    return float(np.max(np.abs(a - b)) / scale) if a.size else 0.0


def smoke() -> None:
    """Every entry point once on a small problem, errors included (for valgrind / sanitizers)."""
    load0 = os.getloadavg()[0]
    mk = make_market(n_underlyings=3, n_instruments=20, n_hist=100)
    for impl in (ccore, reference):
        risk = mk.risk(impl)
        impl.black76_price(mk.kind, mk.forward, mk.strike, mk.expiry_years, mk.implied_vol)
        m = mk.model(impl, risk)
        pf = make_portfolio(300, 3000, 20)
        out = m.compute(*pf, n_threads=2)
        indptr, inst, size, iso = pf
        sl = slice(int(indptr[3]), int(indptr[4]))
        m.what_if(inst[sl], size[sl], iso[sl], np.array([1, 2], np.int32), np.array([1.0, -2.0]))
        m.explain(inst[sl], size[sl], iso[sl])
        impl.valuate(**make_valuation(mk, pf, out), n_threads=2)
        for bad in ((indptr, inst, size * np.nan, iso), (indptr, inst + 100, size, iso)):
            try:
                m.compute(*bad, n_threads=2)
            except ValueError:
                pass
        print(f"smoke {impl.__name__}: im sum {out['im'].sum():.6g}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--accounts", type=int, default=100_000)
    ap.add_argument("--positions", type=int, default=1_000_000)
    ap.add_argument("--instruments", type=int, default=200)
    ap.add_argument("--underlyings", type=int, default=10)
    ap.add_argument("--hist", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--smoke", action="store_true", help="tiny run of every entry point")
    args = ap.parse_args()
    if args.smoke:
        smoke()
        return 0

    load0 = os.getloadavg()[0]
    mk = make_market(n_underlyings=args.underlyings, n_instruments=args.instruments, n_hist=args.hist)
    pf = make_portfolio(args.accounts, args.positions, args.instruments)
    indptr, inst, size, iso = pf
    n_cross = int((iso == 0).sum())
    n_scen = mk.price_shock.shape[0]
    flops = 2.0 * n_cross * n_scen

    rows: list[tuple[str, float, float, str]] = []

    t_rc, risk_c = timed(lambda: mk.risk(ccore, n_threads=args.threads), args.repeat)
    t_rr, risk_r = timed(lambda: mk.risk(reference), 3)
    rows.append(("risk arrays (K x S Black-76)", t_rc, t_rr, f"{mk.kind.size} x {n_scen}"))

    t_mc, m_c = timed(lambda: mk.model(ccore, risk_r), args.repeat)
    t_mr, m_r = timed(lambda: mk.model(reference, risk_r), 3)
    rows.append(("model build (per version)", t_mc, t_mr, ""))

    # OpenBLAS worker threads of the twin's model build busy-wait for a while after their last call
    # and would take a core from the C threads; let them park before timing (time.sleep only).
    time.sleep(1.0)
    m_c.compute(*pf, n_threads=args.threads)          # warm up (page faults of the outputs)
    t_c, out_c = timed(lambda: m_c.compute(*pf, n_threads=args.threads), args.repeat)
    t_c1, _ = timed(lambda: m_c.compute(*pf, n_threads=1), 3)
    t_r, out_r = timed(lambda: m_r.compute(*pf), 1)
    rows.append((f"full recalculation, {args.threads} threads", t_c, t_r, f"{flops / t_c / 1e9:.1f} GFLOP/s"))
    rows.append(("full recalculation, 1 thread", t_c1, t_r, f"{flops / t_c1 / 1e9:.1f} GFLOP/s"))

    # what-if on a typical account (median position count), buying 2 contracts of one instrument
    counts = np.diff(indptr)
    typical = int(np.flatnonzero(counts == int(np.median(counts)))[0])
    sl = slice(int(indptr[typical]), int(indptr[typical + 1]))
    one = (inst[sl], size[sl], iso[sl], np.array([7], np.int32), np.array([2.0]))
    t_wc = per_call(lambda: m_c.what_if(*one), 20000)
    t_wr = per_call(lambda: m_r.what_if(*one), 200)
    rows.append((f"what-if, one account ({counts[typical]} positions)", t_wc, t_wr, ""))
    t_ec = per_call(lambda: m_c.explain(*one[:3]), 2000)
    t_er = per_call(lambda: m_r.explain(*one[:3]), 200)
    rows.append(("explain, one account", t_ec, t_er, ""))

    # equity and states of every account at new marks (what the service runs on every mark batch)
    val = make_valuation(mk, pf, out_c)
    t_vc, val_c = timed(lambda: ccore.valuate(**val, n_threads=args.threads), args.repeat)
    t_vr, val_r = timed(lambda: reference.valuate(**val), 3)
    rows.append((f"valuation on marks, all accounts, {args.threads} threads", t_vc, t_vr,
                 f"states agree: {float(np.mean(val_c['state'] == val_r['state'])):.4%}"))

    diffs = {k: max_rel_diff(out_c[k], out_r[k]) for k in ("im", "grid", "es", "var")}
    diffs["equity"] = max_rel_diff(val_c["equity"], val_r["equity"])
    same_worst = float(np.mean(out_c["worst"] == out_r["worst"]))

    def fmt(t: float) -> str:
        return f"{t * 1e6:9.1f} us" if t < 1e-3 else f"{t * 1e3:9.2f} ms"

    print(f"marginflow core benchmark  ({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"numpy {np.__version__}, OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '-')}, "
          f"MARGINFLOW_CORE_ISA={os.environ.get('MARGINFLOW_CORE_ISA', '-')})")
    load = load0
    if load > 0.5:
        print(f"NOTE: load average {load:.2f} before the run: other work shares the CPUs, times are inflated")
    print(f"{args.accounts:,} accounts, {args.positions:,} positions ({n_cross:,} cross), {args.instruments} "
          f"instruments, {mk.n_grid} grid + {mk.tail_weights.size} tail + {args.hist} FHS scenarios")
    print(f"{'what':44s} {'C core':>12s} {'numpy twin':>12s} {'ratio':>8s}  note")
    for name, tc, tr, note in rows:
        print(f"{name:44s} {fmt(tc):>12s} {fmt(tr):>12s} {tr / tc:7.1f}x  {note}")
    print(f"targets: full recalculation <= 100 ms and >= 20x the twin: "
          f"{'MET' if t_c <= 0.1 and t_r / t_c >= 20 else 'NOT MET'} ({t_c * 1e3:.1f} ms, {t_r / t_c:.1f}x); "
          f"what-if <= 20 us: {'MET' if t_wc <= 20e-6 else 'NOT MET'} ({t_wc * 1e6:.1f} us)")
    print("agreement C vs twin (max |diff| / max |value|): "
          + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()) + f"; same worst scenario: {same_worst:.4%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
