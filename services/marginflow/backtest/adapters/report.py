"""The report: an HTML page (jinja2) with PNG plots beside it (matplotlib, Agg backend) and the tables.

Plots: price and σ_m over time per underlying; IM against the realised loss of one portfolio with
the exceptions marked; IM per unit of notional of each rule; the sweep's trade-off front (when a
sweep ran). Tables: data quality, coverage tests, capital, procyclicality, liquidations, sweep.
Deterministic for the same result (no timestamps in the page; PNG metadata stripped).
"""

from __future__ import annotations

import datetime as dt
import pathlib

import matplotlib

matplotlib.use("Agg")
import jinja2  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from marginflow.backtest.application import RULES, BacktestResult, SweepPoint  # noqa: E402
from marginflow.backtest.domain.history import DataReport  # noqa: E402

RULE_LABEL = {"platform": "platform (configured)", "apc_off": "platform, APC off", "fixed_10": "fixed 10 %",
              "fixed_calibrated": "fixed %, calibrated"}
PNG_META = {"Software": None}


def _dates(time_ms: np.ndarray) -> list[dt.datetime]:
    return [dt.datetime.fromtimestamp(t / 1000.0, tz=dt.timezone.utc) for t in time_ms.tolist()]


def _save(fig, path: pathlib.Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=90, metadata=PNG_META)
    plt.close(fig)
    return path.name


def plot_price_sigma(res: BacktestResult, out: pathlib.Path) -> str:
    h = res.history
    U = len(h.underlyings)
    fig, axes = plt.subplots(U, 1, figsize=(10, 2.6 * U), sharex=True, squeeze=False)
    d = _dates(h.time_ms)
    for j, und in enumerate(h.underlyings):
        ax = axes[j, 0]
        ax.semilogy(d, h.close[:, j], color="black", lw=0.8)
        ax.set_ylabel(f"{und} USD")
        ax2 = ax.twinx()
        ax2.plot(d, res.path.sigma_margin[:, j], color="tab:red", lw=0.9, label="σ_m")
        ax2.plot(d, res.path.sigma_base[:, j], color="tab:blue", lw=0.6, alpha=0.7, label="σ_base (APC off)")
        ax2.set_ylabel("annual vol")
        if j == 0:
            ax2.legend(loc="upper left", fontsize=8)
        ax.axvline(d[int(res.scored[0])], color="grey", ls=":", lw=0.8)
    axes[0, 0].set_title("price (log scale) and margin volatility; dotted: end of warm-up")
    return _save(fig, out / "price_sigma.png")


def plot_im_loss(res: BacktestResult, out: pathlib.Path, portfolio: int = 0) -> str:
    v = res.scored
    d = _dates(res.history.time_ms[v])
    loss = res.loss[:, portfolio]
    im = res.margins["platform"].im[v, portfolio]
    mm = res.margins["platform"].mm[v, portfolio]
    fig, ax = plt.subplots(figsize=(10, 3.6))
    ax.plot(d, loss, color="grey", lw=0.6, label=f"realised loss over {res.horizon_steps} obs.")
    ax.plot(d, im, color="tab:red", lw=0.9, label="IM")
    ax.plot(d, mm, color="tab:orange", lw=0.9, label="MM")
    hit_mm = loss > mm
    hit_im = loss > im
    ax.scatter(np.array(d, dtype=object)[hit_mm], loss[hit_mm], color="tab:orange", s=14, zorder=3, label="loss > MM")
    ax.scatter(np.array(d, dtype=object)[hit_im], loss[hit_im], color="tab:red", marker="x", s=24, zorder=4,
               label="loss > IM")
    ax.set_ylabel("USD")
    ax.set_title(f"{res.portfolios[portfolio].name}: platform IM/MM against the realised loss")
    ax.legend(fontsize=8, ncol=3)
    return _save(fig, out / "im_vs_loss.png")


def plot_margin_per_notional(res: BacktestResult, out: pathlib.Path, portfolio: int = 0) -> str:
    v = res.scored
    d = _dates(res.history.time_ms[v])
    fig, ax = plt.subplots(figsize=(10, 3.4))
    for rule in RULES:
        ratio = res.margins[rule].im[v, portfolio] / res.gross[v, portfolio]
        ax.plot(d, ratio, lw=0.9, label=RULE_LABEL[rule])
    ax.set_ylabel("IM / notional")
    ax.set_title(f"{res.portfolios[portfolio].name}: margin per unit of notional, each rule")
    ax.legend(fontsize=8, ncol=4)
    return _save(fig, out / "margin_per_notional.png")


def plot_front(points: list[SweepPoint], target_rate: float, out: pathlib.Path) -> str:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    cap = np.array([p.capital for p in points])
    rate = np.array([p.mm_exception_rate for p in points])
    noise = np.array([p.noise_liquidations for p in points])
    ptt = np.array([p.peak_to_trough for p in points])
    eff = np.array([p.efficient for p in points])
    for ax, y, ylabel in ((axes[0], rate, "MM exception rate"), (axes[1], noise, "liquidations on noise")):
        sc = ax.scatter(cap, y, c=ptt, cmap="viridis", s=np.where(eff, 70, 30), edgecolors=np.where(eff, "black", "none"))
        for p, x, yy in zip(points, cap, y):
            ax.annotate(p.label, (x, yy), fontsize=7, xytext=(3, 3), textcoords="offset points")
        conf = [i for i, p in enumerate(points) if p.configured]
        if conf:
            ax.scatter(cap[conf], y[conf], marker="*", s=260, color="tab:red", zorder=5, label="configured")
        ax.set_xlabel("capital: Σ IM / Σ notional")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)
    axes[0].axhline(target_rate, color="grey", ls=":", lw=0.8)
    fig.colorbar(sc, ax=axes, label="median peak-to-trough")
    axes[0].set_title("trade-off front (outlined: not dominated)")
    fig.savefig(out / "tradeoff_front.png", dpi=90, metadata=PNG_META)
    plt.close(fig)
    return "tradeoff_front.png"


TEMPLATE = jinja2.Template("""<!doctype html>
<html><head><meta charset="utf-8"><title>marginflow margin backtest</title>
<style>
body{font-family:system-ui,sans-serif;margin:1.5em;max-width:1200px}
table{border-collapse:collapse;margin:0.6em 0 1.4em 0;font-size:13px}
td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}
th{background:#f4f4f4} td.l,th.l{text-align:left}
.fail{background:#fde2e2}.pass{background:#e3f6e3}.green{background:#e3f6e3}.yellow{background:#fff4c2}.red{background:#fde2e2}
img{max-width:100%}
</style></head><body>
<h1>Margin backtest</h1>
<p>History: {{ source }} — {{ unds }}, {{ n }} observations every {{ interval }}, from {{ start }} to {{ end }};
horizon {{ h }} observations ({{ horizon_s }} s); {{ scored }} scored vintages after a warm-up of {{ warmup }} returns.
Margin core: {{ core }}. Seed: {{ seed }}.</p>

<h2>Data quality</h2>
<table><tr><th class="l">rows</th><th>parse errors</th><th>rejected by validation</th><th>ignored</th><th>accepted</th><th>observations</th><th>intervals not shared</th></tr>
<tr><td class="l">{{ data.rows }}</td><td>{{ data.bad_rows }}</td><td>{{ rejected }}</td><td>{{ data.ignored }}</td><td>{{ data.accepted }}</td><td>{{ data.observations }}</td><td>{{ data.unaligned_intervals }}</td></tr></table>

<h2>Headline (MM at {{ c0pct }} %, the configured model against the fixed 10 % rule)</h2>
<table><tr><th class="l">rule</th><th>portfolios passing Kupiec &amp; Christoffersen at {{ sig }}</th><th>Σ IM / Σ notional</th><th>mean IM / notional (per portfolio)</th><th>liquidations</th><th>on noise</th></tr>
{% for r in headline %}<tr><td class="l">{{ r.label }}</td><td>{{ r.passing }} / {{ r.total }}</td><td>{{ "%.4f"|format(r.capital) }}</td><td>{{ "%.4f"|format(r.mean_ratio) }}</td><td>{{ r.liquidated }}</td><td>{{ r.noise }}</td></tr>
{% endfor %}</table>

<h2>Plots</h2>
{% for p in plots %}<p><img src="{{ p }}" alt="{{ p }}"></p>{% endfor %}

<h2>Coverage: exceptions, Kupiec, Christoffersen, traffic light</h2>
<p>Exceptions per day count overlapping {{ h }}-observation windows; the tests and the traffic light use one window in {{ h }} (non-overlapping: independent losses).
Kupiec POF (1995) χ²(1); Christoffersen (1998) independence χ²(1) and conditional coverage χ²(2); Basel (1996) zones per block of 250 tested windows.</p>
{% for rule, rows in coverage.items() %}
<h3>{{ rule_label[rule] }}</h3>
<table><tr><th class="l">portfolio</th><th>measure</th><th>coverage</th><th>exceptions / days</th><th>tested: exceptions / n (expected)</th><th>Kupiec LR</th><th>p</th><th>Christoffersen ind. p</th><th>cond. cov. p</th><th>zones</th><th>verdict</th></tr>
{% for r in rows %}<tr><td class="l">{{ r.portfolio }}</td><td>{{ r.measure }}</td><td>{{ r.coverage }}</td><td>{{ r.exc_daily }} / {{ r.obs_daily }}</td><td>{{ r.exc }} / {{ r.n }} ({{ "%.1f"|format(r.expected) }})</td><td>{{ "%.3f"|format(r.lr) }}</td><td>{{ "%.4f"|format(r.p_pof) }}</td><td>{{ "%.4f"|format(r.p_ind) }}</td><td>{{ "%.4f"|format(r.p_cc) }}</td><td>{% for z in r.zones %}<span class="{{ z[2] }}">{{ z[1] }}</span> {% endfor %}</td><td class="{{ 'pass' if r.passes else 'fail' }}">{{ r.verdict }}</td></tr>
{% endfor %}</table>
{% endfor %}

<h2>Capital, procyclicality, liquidations per portfolio</h2>
<table><tr><th class="l">portfolio</th><th class="l">rule</th><th>mean IM / notional</th><th>median</th><th>mean IM USD</th><th>peak/trough</th><th>max 1-obs rise</th><th>max {{ pn }}-obs rise</th><th>jump on worst days (mean / max)</th><th>accounts</th><th>liquidated</th><th>on noise</th></tr>
{% for r in per_portfolio %}<tr><td class="l">{{ r.portfolio }}</td><td class="l">{{ rule_label[r.rule] }}</td><td>{{ "%.4f"|format(r.im_per_notional_mean) }}</td><td>{{ "%.4f"|format(r.im_per_notional_median) }}</td><td>{{ "{:,.0f}".format(r.im_usd_mean) }}</td><td>{{ "%.2f"|format(r.procyclicality.peak_to_trough) }}</td><td>{{ "%.1f"|format(100*r.procyclicality.max_increase_1) }} %</td><td>{{ "%.1f"|format(100*r.procyclicality.max_increase_n) }} %</td><td>{{ "%.1f"|format(100*r.procyclicality.worst_day_jump_mean) }} % / {{ "%.1f"|format(100*r.procyclicality.worst_day_jump_max) }} %</td><td>{{ r.liquidations.accounts }}</td><td>{{ r.liquidations.liquidated }}</td><td>{{ r.liquidations.on_noise }}</td></tr>
{% endfor %}</table>

{% if sweep %}
<h2>Sweep: the trade-off front</h2>
<p>One setting at a time around the configured point (★ in the plot, <b>bold</b> here); "front" = no other point is at least as good on all of
excess MM exceptions over {{ c0pct }} %, capital, peak-to-trough and liquidations on noise.</p>
<table><tr><th class="l">point</th><th>MM exception rate</th><th>portfolios failing Kupiec/Christoffersen</th><th>Σ IM / Σ notional</th><th>median peak/trough</th><th>median max {{ pn }}-obs rise</th><th>liquidations on noise</th><th>front</th></tr>
{% for p in sweep %}<tr>{% if p.configured %}<td class="l"><b>{{ p.label }}</b></td>{% else %}<td class="l">{{ p.label }}</td>{% endif %}<td>{{ "%.4f"|format(p.mm_exception_rate) }}</td><td>{{ p.kupiec_failures }}</td><td>{{ "%.4f"|format(p.capital) }}</td><td>{{ "%.2f"|format(p.peak_to_trough) }}</td><td>{{ "%.1f"|format(100*p.max_increase_n) }} %</td><td>{{ p.noise_liquidations }}</td><td>{{ "yes" if p.efficient else "" }}</td></tr>
{% endfor %}</table>
{% endif %}

<h2>Settings</h2>
<table>{% for k, v in settings %}<tr><td class="l">{{ k }}</td><td class="l">{{ v }}</td></tr>{% endfor %}</table>
{% if skipped %}<p>Portfolios skipped (underlying not in the history): {{ skipped|join(", ") }}</p>{% endif %}
</body></html>
""")


def headline(res: BacktestResult) -> list[dict]:
    c0 = res.config.coverage_levels[0]
    out = []
    for rule in RULES:
        rows = res.results[rule]
        out.append({"label": RULE_LABEL[rule], "passing": sum(r.test("MM", c0).passes(res.config.significance) for r in rows),
                    "total": len(rows), "capital": res.book_capital(rule),
                    "mean_ratio": float(np.mean([r.im_per_notional_mean for r in rows])),
                    "liquidated": sum(r.liquidations.liquidated for r in rows),
                    "noise": sum(r.liquidations.on_noise for r in rows)})
    return out


def verdict(test, significance: float) -> str:
    if test.passes(significance):
        return "pass"
    if test.kupiec.p_value < significance and test.kupiec.exceptions < test.kupiec.expected:
        return "fail: over-covered"
    return "fail"


def coverage_rows(res: BacktestResult) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    sig = res.config.significance
    for rule in RULES:
        rows = []
        for r in res.results[rule]:
            for t in r.tests:
                rows.append({"portfolio": r.portfolio, "measure": t.measure, "coverage": t.coverage,
                             "exc_daily": t.exceptions_daily, "obs_daily": t.observations_daily,
                             "exc": t.kupiec.exceptions, "n": t.kupiec.n, "expected": t.kupiec.expected,
                             "lr": t.kupiec.lr, "p_pof": t.kupiec.p_value, "p_ind": t.christoffersen.p_ind,
                             "p_cc": t.christoffersen.p_cc, "zones": t.zones, "passes": t.passes(sig),
                             "verdict": verdict(t, sig)})
        out[rule] = rows
    return out


def write_report(res: BacktestResult, data: DataReport, out_dir: str | pathlib.Path, *, source: str, seed: int | None,
                 core_impl: str, sweep: list[SweepPoint] | None = None, skipped: list[str] | None = None,
                 settings: list[tuple[str, str]] | None = None) -> pathlib.Path:
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots = [plot_price_sigma(res, out), plot_im_loss(res, out), plot_margin_per_notional(res, out)]
    if sweep:
        plots.append(plot_front(sweep, 1.0 - res.config.coverage_levels[0], out))
    h = res.history
    d = _dates(h.time_ms[[0, -1]])
    per_portfolio = [r for i in range(len(res.portfolios)) for rule in RULES for r in [res.results[rule][i]]]
    html = TEMPLATE.render(
        source=source, unds=", ".join(h.underlyings), n=h.n, interval=_interval(h.interval_ms),
        start=d[0].date().isoformat(), end=d[1].date().isoformat(), h=res.horizon_steps,
        horizon_s=f"{res.config.estimator.grid.horizon_seconds:g}", scored=len(res.scored),
        warmup=res.config.warmup_returns, core=core_impl, seed="—" if seed is None else seed, data=data,
        rejected=", ".join(f"{k} {v}" for k, v in sorted(data.rejected.items())) or "0",
        c0pct=f"{100 * res.config.coverage_levels[0]:g}", sig=res.config.significance, headline=headline(res),
        plots=plots, coverage=coverage_rows(res), rule_label=RULE_LABEL, per_portfolio=per_portfolio,
        pn=res.config.procyclicality_steps, sweep=sweep, settings=settings or [], skipped=skipped or [])
    path = out / "report.html"
    path.write_text(html)
    return path


def _interval(ms: int) -> str:
    if ms % 86_400_000 == 0:
        return f"{ms // 86_400_000} d"
    if ms % 3_600_000 == 0:
        return f"{ms // 3_600_000} h"
    if ms % 60_000 == 0:
        return f"{ms // 60_000} min"
    return f"{ms} ms"
