from __future__ import annotations

import datetime as dt

import pytest

from marginflow.shared.universe import Kind, UniverseError, load_universe, parse_universe, resolve_expiry

AS_OF = 1_764_000_000_000   # Monday 2025-11-24 16:00 UTC


def test_relative_expiry_is_a_friday_0800_utc_at_least_n_days_ahead():
    ms = resolve_expiry("+7d", AS_OF)
    when = dt.datetime.fromtimestamp(ms / 1000, tz=dt.timezone.utc)
    assert (when.weekday(), when.hour, when.minute) == (4, 8, 0)
    assert dt.timedelta(days=7) <= when - dt.datetime.fromtimestamp(AS_OF / 1000, tz=dt.timezone.utc) < dt.timedelta(days=14)
    assert resolve_expiry("2026-03-27T08:00:00Z", AS_OF) == 1_774_598_400_000


def test_default_universe_has_every_kind_for_btc_eth_sol():
    u = load_universe(None, AS_OF)
    assert set(u.underlyings) == {"BTC", "ETH", "SOL"}
    kinds = {(i.underlying, i.kind) for i in u.instruments.values()}
    for und in ("BTC", "ETH"):
        assert {(und, k) for k in Kind} <= kinds
    assert ("SOL", Kind.PERPETUAL) in kinds and ("SOL", Kind.FUTURE) in kinds
    opt = next(i for i in u.instruments.values() if i.is_option)
    assert opt.strike_usd > 0 and opt.expiry_ms > AS_OF


@pytest.mark.parametrize("text, message", [
    ("not toml [", "not valid TOML"),
    ("[[instrument]]\nsymbol='X'\nkind='perpetual'\nunderlying='BTC'", r"no \[\[underlying\]\]"),
    ("[[underlying]]\nsymbol='BTC'\nindex_price_usd=1\nannual_vol=0.5\n[[instrument]]\nsymbol='X'\nkind='swap'\n"
     "underlying='BTC'\ncontract_size=1\ntick_size_usd=1\nlot_size=1", "kind must be"),
    ("[[underlying]]\nsymbol='BTC'\nindex_price_usd=1\nannual_vol=0.5\n[[instrument]]\nsymbol='X'\nkind='perpetual'\n"
     "underlying='DOGE'\ncontract_size=1\ntick_size_usd=1\nlot_size=1", "unknown underlying"),
    ("[[underlying]]\nsymbol='BTC'\nindex_price_usd=-1\nannual_vol=0.5", "index_price_usd must be"),
    ("[[underlying]]\nsymbol='BTC'\nindex_price_usd=1\nannual_vol=0.5\n[[instrument]]\nsymbol='X'\nkind='future'\n"
     "underlying='BTC'\ncontract_size=1\ntick_size_usd=1\nlot_size=1", "needs an expiry"),
])
def test_bad_universe_files_name_the_problem(text, message):
    with pytest.raises(UniverseError, match=message):
        parse_universe(text, AS_OF)
