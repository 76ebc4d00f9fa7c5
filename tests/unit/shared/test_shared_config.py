"""Settings parsing: every bad value stops with a message naming the variable."""

from __future__ import annotations

import dataclasses

import pytest

from marginflow.marketdata.settings import MarketDataSettings
from marginflow.shared.config import CommonSettings, ConfigError, describe, env, load, positive_int


def test_defaults_and_overrides():
    s = load(MarketDataSettings, {"KAFKA_BOOTSTRAP_SERVERS": "a:1,b:2", "MF_MD_SPEED": "max", "MF_TOPIC_PREFIX": "x."})
    assert s.common.kafka_bootstrap_servers == ("a:1", "b:2")
    assert s.common.bootstrap == "a:1,b:2"
    assert s.speed is None
    assert s.common.topics.marks == "x.md.marks"
    assert s.grpc_port == 50051


@pytest.mark.parametrize("var, value", [
    ("KAFKA_BOOTSTRAP_SERVERS", "nohostport"), ("KAFKA_BOOTSTRAP_SERVERS", "h:99999"),
    ("REDIS_URL", "http://x"), ("MF_LOG_LEVEL", "LOUD"), ("MF_MARKETDATA_GRPC_PORT", "-1"),
    ("MF_MD_SPEED", "0"), ("MF_MD_SPEED", "fast"), ("MF_MD_SOURCE", "feed"), ("MF_MD_JUMP_THRESHOLD", "1.5"),
    ("MF_MD_SIM_SEED", "-3"), ("MF_LOG_JSON", "perhaps"), ("MF_UNIVERSE_AS_OF", "yesterday"),
    ("MF_MD_SPEED", "nan"),
])
def test_bad_value_names_the_variable(var, value):
    with pytest.raises(ConfigError) as err:
        load(MarketDataSettings, {var: value})
    assert var in str(err.value)


def test_required_value_missing_names_the_variable():
    @dataclasses.dataclass(frozen=True)
    class Needs:
        workers: int = env("MF_TEST_WORKERS", positive_int)

    with pytest.raises(ConfigError, match="MF_TEST_WORKERS is required"):
        load(Needs, {})


def test_settings_are_frozen():
    s = load(CommonSettings, {})
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.redis_url = "redis://elsewhere"  # type: ignore[misc]


def test_describe_lists_nested_variables():
    names = [row[0] for row in describe(MarketDataSettings)]
    assert "KAFKA_BOOTSTRAP_SERVERS" in names and "MF_MD_SPEED" in names


def test_universe_as_of_is_midnight_utc():
    s = load(CommonSettings, {"MF_UNIVERSE_AS_OF": "2026-01-02"})
    assert s.universe_as_of_ms(0) == 1_767_312_000_000
    assert load(CommonSettings, {}).universe_as_of_ms(1_767_312_000_000 + 5_000) == 1_767_312_000_000


@pytest.mark.parametrize("var, value", [("MF_MARGIN_ASSETS", "usdc,BTC"), ("MF_MARGIN_STABLECOINS", "US DC"),
                                        ("MF_MARGIN_SETTLEMENT_ASSET", "X")])
def test_asset_symbols_are_checked_where_services_take_them(var, value):
    from marginflow.margin.settings import MarginSettings

    with pytest.raises(ConfigError) as err:
        load(MarginSettings, {var: value})
    assert var in str(err.value)
