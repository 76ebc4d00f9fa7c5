from decimal import Decimal as D

import pytest

from marginflow.portfolio.domain.ledger import LedgerRules
from marginflow.portfolio.domain.model import InstrumentSpec


@pytest.fixture
def rules() -> LedgerRules:
    instruments = {
        "BTC-PERP": InstrumentSpec("BTC-PERP", "BTC", D("1"), D("0.001")),
        "ETH-PERP": InstrumentSpec("ETH-PERP", "ETH", D("1"), D("0.01")),
        "SOL-PERP": InstrumentSpec("SOL-PERP", "SOL", D("10"), D("0.1")),
        "BTC-C": InstrumentSpec("BTC-C", "BTC", D("1"), D("0.01"), is_option=True),
    }
    return LedgerRules(instruments, frozenset({"USDC", "USDT", "BTC", "ETH"}), "USDC", dedupe_window=4)
