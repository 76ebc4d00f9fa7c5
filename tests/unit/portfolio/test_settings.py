import pytest

from marginflow.portfolio.settings import PortfolioSettings
from marginflow.shared.config import ConfigError, describe, load


def test_defaults():
    s = load(PortfolioSettings, {})
    assert (s.grpc_port, s.metrics_port, s.redis_prefix, s.settlement_asset) == (50053, 9103, "mf:pf:", "USDC")
    assert s.collateral_assets(["BTC", "ETH"]) == {"USDC", "USDT", "BTC", "ETH"}


def test_explicit_assets_always_include_the_settlement_asset():
    s = load(PortfolioSettings, {"MF_PORTFOLIO_ASSETS": "USDT,BTC", "MF_PORTFOLIO_SETTLEMENT_ASSET": "USDC"})
    assert s.collateral_assets(["ETH"]) == {"USDC", "USDT", "BTC"}


@pytest.mark.parametrize("var, value", [
    ("MF_PORTFOLIO_GRPC_PORT", "70000"), ("MF_PORTFOLIO_DEDUPE_IDS", "0"), ("MF_PORTFOLIO_REBUILD", "never"),
    ("MF_PORTFOLIO_REDIS_PREFIX", "a{b}"), ("MF_PORTFOLIO_SETTLEMENT_ASSET", "usd coin"),
])
def test_bad_values_name_the_variable(var, value):
    with pytest.raises(ConfigError, match=var):
        load(PortfolioSettings, {var: value})


def test_every_setting_is_documented():
    rows = [r for r in describe(PortfolioSettings) if r[0].startswith(("MF_PORTFOLIO", "MF_ADMIN"))]
    assert len(rows) >= 14 and all(doc for _, _, doc in rows)
