"""The whole backtest on a small simulated history, through the command line, into tmp_path."""

from __future__ import annotations

import re

import numpy as np
import pytest

from bt_helpers import UNDERLYINGS, default_config, universe
from marginflow.backtest.adapters.history_io import load_history, simulate_closes, write_history_csv
from marginflow.backtest.adapters.report import write_report
from marginflow.backtest.application import RULES, run_backtest
from marginflow.backtest.domain.history import validation_for
from marginflow.backtest.domain.portfolios import parse_portfolios
from marginflow.backtest.service import DEFAULT_PORTFOLIOS, run
from marginflow.backtest.domain.statistics import transition_counts
import marginflow.core as core

DAYS = 400


@pytest.fixture(scope="module")
def history_csv(tmp_path_factory):
    closes, times, _stress = simulate_closes(universe(), DAYS, seed=5)
    path = write_history_csv(tmp_path_factory.mktemp("hist") / "history.csv", UNDERLYINGS, times, closes)
    # bad prints: an unparsable row, a NaN, a slipped decimal the next day contradicts
    with path.open("a") as fh:
        fh.write("not-a-time,BTC,1\n")
        fh.write(f"{int(times[100]) + 1000},ETH,nan,,,,\n")
        fh.write(f"{int(times[200]) + 1000},SOL,{closes[200, 2] * 10:.6f},,,,\n")
    return path


@pytest.fixture(scope="module")
def result(history_csv):
    hist, data = load_history(history_csv, universe(), None, validation_for(None))
    return run_backtest(hist, parse_portfolios(DEFAULT_PORTFOLIOS.read_text()), default_config(), core), data


def test_cli_writes_the_report_with_plots_tables_and_the_sweep(history_csv, result, tmp_path):
    out = tmp_path / "report"
    assert run(["--data", str(history_csv), "--out", str(out), "--sweep", "--no-progress"]) == 0
    for name in ("report.html", "price_sigma.png", "im_vs_loss.png", "margin_per_notional.png", "tradeoff_front.png"):
        assert (out / name).stat().st_size > 1000, name
    html = (out / "report.html").read_text()
    # data quality: the three bad prints, each with its reason
    assert re.search(r"<td class=\"l\">\d+</td><td>1</td><td>jump_contradicted 1, non_finite_price 1</td>", html)
    # the numbers in the tables are the run's (same data, same settings → same result)
    res = result[0]
    h = res.horizon_steps
    for rule in RULES:
        for p, r in enumerate(res.results[rule]):
            loss = res.loss[:, p]
            mm = res.margins[rule].mm[res.scored, p]
            hits = loss > mm
            t = r.test("MM", 0.99)
            assert t.exceptions_daily == int(hits.sum()) and t.observations_daily == len(res.scored)
            assert t.kupiec.n == len(hits[::h]) and t.kupiec.exceptions == int(hits[::h].sum())
            assert sum(transition_counts(hits[::h])) == t.kupiec.n - 1
            assert f"{t.exceptions_daily} / {t.observations_daily}" in html
    assert "configured</b>" in html and "trade-off front" in html
    # the fixed 10 % rule asks exactly 10 % of notional every day
    ratio = res.margins["fixed_10"].im[res.scored, 0] / res.gross[res.scored, 0]
    np.testing.assert_allclose(ratio, 0.10)


def test_deterministic_for_a_seed(tmp_path):
    a = simulate_closes(universe(), 60, seed=9)
    b = simulate_closes(universe(), 60, seed=9)
    c = simulate_closes(universe(), 60, seed=10)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], c[0])


def test_the_report_is_byte_identical_when_written_twice(result, tmp_path):
    res, data = result
    one = write_report(res, data, tmp_path / "a", source="x", seed=5, core_impl="c")
    two = write_report(res, data, tmp_path / "b", source="x", seed=5, core_impl="c")
    assert one.read_bytes() == two.read_bytes()
    assert (tmp_path / "a" / "im_vs_loss.png").read_bytes() == (tmp_path / "b" / "im_vs_loss.png").read_bytes()


def test_bad_arguments_exit_with_2(tmp_path):
    assert run(["--portfolios", str(tmp_path / "missing.toml"), "--no-progress"]) == 2
    short = tmp_path / "short.csv"
    short.write_text("ts,instrument,price\n1700000000000,BTC,1\n1700086400000,BTC,1.1\n1700172800000,BTC,1.2\n")
    assert run(["--data", str(short), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
