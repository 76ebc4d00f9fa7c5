"""Wiring of ``python -m marginflow.backtest``: options → config, the history, the run, the report.

Everything the use cases need is built here once: the universe (packaged), the reference portfolios
(packaged TOML or ``--portfolios``), the history (``--data`` CSV, or the marketdata simulator), the
margin core (``marginflow.core``: the C core when built), the progress bar.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import sys
import time

import click
import typer
from rich.console import Console
from rich.table import Table

import marginflow.core as core
from marginflow.backtest.adapters.history_io import (SIM_START_MS, load_history, simulate_closes,
                                                     write_history_csv)
from marginflow.backtest.adapters.progress import rich_progress
from marginflow.backtest.adapters.report import headline, write_report
from marginflow.backtest.application import BacktestConfig, run_backtest, run_sweep
from marginflow.backtest.domain.estimates import EstimatorSettings
from marginflow.backtest.domain.history import validation_for
from marginflow.backtest.domain.portfolios import PortfolioError, parse_portfolios, select_portfolios
from marginflow.margin.service import engine_config as margin_engine_config
from marginflow.margin.settings import MarginSettings
from marginflow.riskparams.application import engine_config as riskparams_engine_config
from marginflow.riskparams.settings import RiskParamsSettings
from marginflow.shared.config import ConfigError, load
from marginflow.shared.universe import DEFAULT_UNIVERSE_FILE, MS_PER_DAY, Universe, UniverseError, load_universe

DEFAULT_PORTFOLIOS = DEFAULT_UNIVERSE_FILE.parent / "backtest_portfolios.toml"
SIM_UNDERLYINGS = ("BTC", "ETH", "SOL")

app = typer.Typer(add_completion=False, help=__doc__)


def service_config(universe: Universe, environ=None, **overrides) -> BacktestConfig:
    """The configured model: riskparams' and margin's own settings, read from ``environ`` the way the
    services read them (default ``os.environ``: the ``MF_RISKPARAMS_*`` and ``MF_MARGIN_*`` variables
    the services run with; ``{}``: their embedded defaults)."""
    env = os.environ if environ is None else environ
    risk = riskparams_engine_config(load(RiskParamsSettings, env), tuple(universe.underlyings))
    margin = margin_engine_config(load(MarginSettings, env), universe)
    return BacktestConfig(estimator=EstimatorSettings.of_engine(risk), mm_factor=margin.mm_factor,
                          bracket_floors_usd=margin.bracket_floors_usd, bracket_rates=margin.bracket_rates,
                          contingency=margin.contingency, **overrides)


def settings_for(base: EstimatorSettings, interval_ms: int, *, lambda_fast: float | None = None,
                 lambda_slow: float | None = None, apc_buffer: float | None = None, floor_weight: float | None = None,
                 z: float | None = None, horizon_seconds: float | None = None,
                 tail_multiples: tuple[float, ...] | None = None) -> EstimatorSettings:
    """The service's settings ``base`` for this sampling interval, with the options given (None: the
    service's): decays given per day become per interval (``λ^(interval/day)``, the same half-life in
    time) and look-backs given in days become intervals."""
    per_day = MS_PER_DAY / interval_ms
    scale = (lambda n: max(1, int(round(n * per_day)))) if per_day != 1 else (lambda n: n)
    pick = lambda given, default: default if given is None else given   # noqa: E731
    grid = dataclasses.replace(base.grid, z=pick(z, base.grid.z),
                               horizon_seconds=pick(horizon_seconds, base.grid.horizon_seconds),
                               tail_multiples=pick(tail_multiples, base.grid.tail_multiples))
    return dataclasses.replace(
        base, lambda_fast=pick(lambda_fast, base.lambda_fast) ** (1.0 / per_day),
        lambda_slow=pick(lambda_slow, base.lambda_slow) ** (1.0 / per_day),
        lambda_correlation=base.lambda_correlation ** (1.0 / per_day),
        floor_lookback=scale(base.floor_lookback), floor_stress_window=scale(base.floor_stress_window),
        floor_stress_weight=pick(floor_weight, base.floor_stress_weight),
        apc=dataclasses.replace(base.apc, buffer=pick(apc_buffer, base.apc.buffer)), grid=grid)


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(",") if x.strip())


@app.command()
def main(
    data: pathlib.Path = typer.Option(None, help="price history, the replay CSV (ts,instrument,price,...); "
                                                 "without it the marketdata simulator generates one"),
    out: pathlib.Path = typer.Option(pathlib.Path(".run/backtest"), help="directory of report.html and the PNGs"),
    portfolios: pathlib.Path = typer.Option(DEFAULT_PORTFOLIOS, help="reference portfolios (TOML)"),
    days: int = typer.Option(3650, help="simulated history: days"),
    seed: int = typer.Option(7, help="simulated history: seed"),
    write_history: pathlib.Path = typer.Option(None, help="also write the simulated history as a replay CSV here"),
    interval_ms: int = typer.Option(0, help="sampling interval, ms (0 = the history's own, its median spacing)"),
    jump_threshold: float = typer.Option(0.0, help="validation: log move held as a suspect jump "
                                                   "(0 = marketdata's 0.10 below 1 h sampling, 0.5 for coarser)"),
    lambda_fast: float = typer.Option(None, help="fast EWMA decay per day (default: riskparams' setting)"),
    lambda_slow: float = typer.Option(None, help="slow EWMA decay per day (default: riskparams' setting)"),
    apc_buffer: float = typer.Option(None, help="APC buffer in calm markets (>= 0.25; default: riskparams')"),
    floor_weight: float = typer.Option(None, help="weight of the stressed period in the floor (default: riskparams')"),
    z: float = typer.Option(None, help="grid z (default: riskparams')"),
    horizon_seconds: float = typer.Option(None, help="margin horizon (grid, FHS and realised loss), s "
                                                     "(default: riskparams')"),
    tail_multiples: str = typer.Option(None, help="extended moves as multiples of the grid range (default: riskparams')"),
    mm_factor: float = typer.Option(None, help="MM = factor × IM (default: margin's setting)"),
    coverage: str = typer.Option("0.99,0.995", help="coverage levels tested (the first also calibrates the fixed rule)"),
    warmup: int = typer.Option(250, help="returns before scoring starts"),
    sweep: bool = typer.Option(False, "--sweep", help="also sweep the settings and plot the trade-off front"),
    progress: bool = typer.Option(True, help="progress bar"),
) -> None:
    started = time.perf_counter()
    console = Console(stderr=True)
    as_of_ms = SIM_START_MS
    try:
        universe = load_universe(None, as_of_ms)
        specs = parse_portfolios(portfolios.read_text())
        base = service_config(universe)
    except (OSError, UniverseError, PortfolioError, ConfigError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    if data is None:
        closes, times, stress = simulate_closes(universe, days, seed, SIM_UNDERLYINGS)
        data = write_history or out / "simulated_history.csv"
        write_history_csv(data, SIM_UNDERLYINGS, times, closes)
        source = f"simulator, seed {seed}, {days} days, stress on {stress.mean():.0%} of days ({data})"
        shown_seed: int | None = seed
    else:
        source = str(data)
        shown_seed = None
    try:
        given = interval_ms or None
        history, report = load_history(data, universe, given, validation_for(given, jump_threshold))
        if given is None and not jump_threshold and history.interval_ms < 3_600_000:
            # the detected interval is intraday: validate again with marketdata's own jump threshold
            history, report = load_history(data, universe, history.interval_ms, validation_for(history.interval_ms))
        cfg = dataclasses.replace(
            base, estimator=settings_for(base.estimator, history.interval_ms, lambda_fast=lambda_fast,
                                         lambda_slow=lambda_slow, apc_buffer=apc_buffer, floor_weight=floor_weight,
                                         z=z, horizon_seconds=horizon_seconds,
                                         tail_multiples=_floats(tail_multiples) if tail_multiples else None),
            mm_factor=base.mm_factor if mm_factor is None else mm_factor, coverage_levels=_floats(coverage),
            warmup_returns=warmup)
        kept, skipped = select_portfolios(specs, history.underlyings)
        if not kept:
            raise ValueError(f"no reference portfolio trades only {', '.join(history.underlyings)}")
        with rich_progress(progress) as bar:
            result = run_backtest(history, kept, cfg, core, progress=bar)
            points = run_sweep(history, kept, cfg, core, result.garch, progress=bar) if sweep else None
    except (OSError, ValueError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    settings = [(f.name, str(getattr(cfg.estimator, f.name))) for f in dataclasses.fields(cfg.estimator)]
    settings += [("mm_factor", str(cfg.mm_factor)), ("coverage_levels", str(cfg.coverage_levels)),
                 ("warmup_returns", str(cfg.warmup_returns)), ("fixed_rate", str(cfg.fixed_rate)),
                 ("interval_ms", str(history.interval_ms)), ("horizon_steps", str(result.horizon_steps))]
    path = write_report(result, report, out, source=source, seed=shown_seed, core_impl=core.IMPLEMENTATION,
                        sweep=points, skipped=skipped, settings=settings)
    if points:
        _sweep_table(Console(), points, cfg)
    _summary(Console(), result, report, path, time.perf_counter() - started)


def _sweep_table(console: Console, points, cfg: BacktestConfig) -> None:
    c0 = cfg.coverage_levels[0]
    table = Table(title=f"trade-off front (★ configured, ● not dominated) — MM at {100 * c0:g} %, target rate {1 - c0:.3f}")
    table.add_column("point", justify="left", no_wrap=True)
    for col in ("MM exc. rate", "failing K/C", "Σ IM/Σ notional", "median peak/trough", "noise liq.", ""):
        table.add_column(col, justify="right")
    for p in points:
        mark = ("★" if p.configured else "") + ("●" if p.efficient else "")
        table.add_row(p.label, f"{p.mm_exception_rate:.4f}", str(p.kupiec_failures), f"{p.capital:.4f}",
                      f"{p.peak_to_trough:.2f}", str(p.noise_liquidations), mark)
    console.print(table)


def _summary(console: Console, result, report, path: pathlib.Path, seconds: float) -> None:
    c0 = result.config.coverage_levels[0]
    table = Table(title=f"MM at {100 * c0:g} % — {len(result.portfolios)} portfolios, {len(result.scored)} scored days")
    for col in ("rule", "pass Kupiec+Christoffersen", "Σ IM / Σ notional", "mean IM/notional", "liquidated", "on noise"):
        table.add_column(col, justify="right")
    for row in headline(result):
        table.add_row(row["label"], f"{row['passing']}/{row['total']}", f"{row['capital']:.4f}",
                      f"{row['mean_ratio']:.4f}", str(row["liquidated"]), str(row["noise"]))
    console.print(table)
    dropped = ", ".join(f"{k} {v}" for k, v in sorted(report.rejected.items())) or "none"
    console.print(f"bad prints dropped: {report.bad_rows} unparsable, {dropped}; "
                  f"{report.observations} observations")
    console.print(f"report: {path}  ({seconds:.1f} s; {', '.join(f'{k} {v:.1f}' for k, v in result.seconds.items())})")



def run(argv: list[str] | None = None) -> int:
    try:
        rc = app(args=argv, standalone_mode=False)     # returns the exit code of a typer.Exit
    except SystemExit as exc:
        return int(exc.code or 0)
    except click.exceptions.ClickException as exc:    # usage errors
        exc.show()
        return 2
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run())
