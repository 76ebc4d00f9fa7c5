"""The demo book: N accounts with realistic portfolios, emitted as deposits and fills.

``python -m marginflow.portfolio.demo_book --accounts 10000 --seed 7`` publishes the deposits to
account.events, then the fills to trades.fills (keyed by account). The same seed, account count,
start time and universe give exactly the same records (:func:`generate_book` is pure), so
publishing twice changes nothing: the portfolio service ignores fill and event ids it has seen.

Portfolios (share of accounts):

==========================  ======  ===========================================================
archetype                   share   what
==========================  ======  ===========================================================
``directional_perp``        28 %    one perpetual, long or short, 1.5-4x, sometimes added to or
                                    partly closed
``multi_perp``              10 %    two or three perpetuals, with adds, partial closes, a flip
``calendar_spread``         12 %    long the far future, short the near one (or the perpetual)
``long_options``            10 %    bought calls and puts
``covered_calls``            8 %    long perpetual, short as many out-of-the-money calls
``naked_short_options``      7 %    short strangle (out-of-the-money call and put)
``hedged_book``             15 %    coin deposited as collateral, the same amount short in the
                                    perpetual; or a long straddle delta-hedged
``market_maker``             8 %    many small fills both sides, maker rebates
``high_leverage``            2 %    one perpetual at 2.5-3.2x: healthy, but just above IM (the
                                    scenario IM of a perpetual is ~17-30 % of its notional), so a
                                    stress move takes them into liquidation
==========================  ======  ===========================================================

Prices: the universe's ``index_price_usd`` with a little noise (perpetuals), plus an annual basis
(futures), and Black-76 premiums with a simple smile (options); all rounded to the tick; sizes
are whole lots. Fees: 5 bp taker on notional (options: 3 bp of the underlying, at most 12.5 % of
the premium), -1 bp for makers. Every account starts healthy (the highly leveraged only just):
liquidations come from market moves, not from the book.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import random
import sys
import time
from collections import Counter
from decimal import ROUND_HALF_EVEN, Decimal

from marginflow.pricing import black76
from marginflow.shared.config import env, non_negative_int
from marginflow.portfolio.domain.model import AccountEvent, Deposit, Fill, IsolatedTransfer, MarginMode, ModeChange, Side
from marginflow.shared.universe import Instrument, Kind, Universe

ARCHETYPES: tuple[tuple[str, float], ...] = (
    ("directional_perp", 0.28), ("multi_perp", 0.10), ("calendar_spread", 0.12), ("long_options", 0.10),
    ("covered_calls", 0.08), ("naked_short_options", 0.07), ("hedged_book", 0.15), ("market_maker", 0.08),
    ("high_leverage", 0.02),
)
UNDERLYING_WEIGHTS = {"BTC": 0.5, "ETH": 0.35, "SOL": 0.15}   # others: 0.1 each
TAKER_FEE = 0.0005         # 5 bp of notional
MAKER_FEE = -0.0001        # 1 bp rebate
OPTION_FEE = 0.0003        # 3 bp of the underlying's notional ...
OPTION_FEE_CAP = 0.125     # ... at most 12.5 % of the premium
FUTURE_BASIS = 0.08        # annualised basis of dated futures over the index
FEE_QUANTUM = Decimal("0.000001")   # USDC has 6 decimals
COIN_QUANTUM = Decimal("0.00000001")
WINDOW_MS = 10 * 60 * 1000          # fills of one account spread over ten minutes


@dataclasses.dataclass(frozen=True)
class DemoBook:
    deposits: list[AccountEvent]       # deposits, and isolated-mode set-ups (mode change + transfer)
    fills: list[Fill]                  # in event-time order (per account order kept)
    archetypes: dict[str, str]         # account id -> archetype

    def summary(self) -> dict[str, int]:
        return dict(sorted(Counter(self.archetypes.values()).items()))


def account_id(index: int) -> str:
    return f"demo-{index:06d}"


class _Account:
    """Builds one account's deposits and fills."""

    def __init__(self, universe: Universe, rng: random.Random, acct: str, seed: int, start_ms: int,
                 settlement_asset: str) -> None:
        self.u = universe
        self.rng = rng
        self.acct = acct
        self.seed = seed
        self.start_ms = start_ms
        self.settle = settlement_asset
        self.fills: list[Fill] = []
        self.deposits: list[AccountEvent] = []
        self.notional_usd = 0.0     # gross notional of what was opened
        self.short_premium_usd = 0.0
        self.t = start_ms + rng.randrange(0, WINDOW_MS // 2)

    # ---- prices and sizes
    def underlying(self) -> str:
        names = sorted(self.u.underlyings)
        weights = [UNDERLYING_WEIGHTS.get(n, 0.1) for n in names]
        return self.rng.choices(names, weights)[0]

    def of_kind(self, und: str, *kinds: Kind) -> list[Instrument]:
        return sorted((i for i in self.u.by_underlying(und) if i.kind in kinds), key=lambda i: (i.expiry_ms, i.symbol))

    def price(self, inst: Instrument) -> float:
        index = self.u.underlyings[inst.underlying].index_price_usd
        if inst.kind == Kind.PERPETUAL:
            return index * (1 + self.rng.uniform(-0.002, 0.002))
        years = inst.years_to_expiry(self.start_ms)
        forward = index * (1 + FUTURE_BASIS * years)
        if inst.kind == Kind.FUTURE:
            return forward * (1 + self.rng.uniform(-0.001, 0.001))
        vol = self.u.underlyings[inst.underlying].annual_vol
        smile = 1 + 0.2 * math.log(inst.strike_usd / forward) ** 2
        premium = black76(forward, inst.strike_usd, max(years, 1 / 365), vol * smile, inst.kind == Kind.CALL)
        return premium * (1 + self.rng.uniform(-0.02, 0.02))

    @staticmethod
    def on_tick(inst: Instrument, price: float) -> Decimal:
        tick = Decimal(repr(inst.tick_size_usd))
        return max(1, round(price / inst.tick_size_usd)) * tick

    @staticmethod
    def lots(inst: Instrument, contracts: float) -> Decimal:
        return max(1, round(contracts / inst.lot_size)) * Decimal(repr(inst.lot_size))

    def size_for(self, inst: Instrument, notional_usd: float) -> Decimal:
        index = self.u.underlyings[inst.underlying].index_price_usd
        return self.lots(inst, notional_usd / (index * inst.contract_size))

    # ---- emitting
    def _event_id(self) -> tuple[str, int]:
        n = len(self.deposits)
        return f"demo-s{self.seed}-{self.acct}-d{n}", self.start_ms - 60_000 + n

    def deposit(self, asset: str, amount: Decimal) -> None:
        eid, t = self._event_id()
        self.deposits.append(Deposit(eid, self.acct, asset, amount, t))

    def isolate(self, inst: Instrument, collateral_usd: Decimal) -> None:
        """Isolated mode for ``inst`` and collateral moved into it (after the account's deposits)."""
        eid, t = self._event_id()
        self.deposits.append(ModeChange(eid, self.acct, inst.symbol, MarginMode.ISOLATED, t))
        eid, t = self._event_id()
        self.deposits.append(IsolatedTransfer(eid, self.acct, inst.symbol, collateral_usd, t))

    def trade(self, inst: Instrument, side: Side, size: Decimal, maker: bool = False,
              mode: MarginMode | None = None) -> Decimal:
        price = self.on_tick(inst, self.price(inst))
        units = float(size) * inst.contract_size
        if inst.is_option:
            index = self.u.underlyings[inst.underlying].index_price_usd
            fee = min(OPTION_FEE * index * units, OPTION_FEE_CAP * float(price) * units)
            if side == Side.SELL:
                self.short_premium_usd += float(price) * units
        else:
            fee = (MAKER_FEE if maker else TAKER_FEE) * float(price) * units
            self.notional_usd += float(price) * units
        if inst.is_option:
            index = self.u.underlyings[inst.underlying].index_price_usd
            self.notional_usd += index * units * (0.15 if side == Side.SELL else 0.0) + float(price) * units
        self.t += self.rng.randrange(50, 20_000)
        fee_usd = Decimal(repr(fee)).quantize(FEE_QUANTUM, rounding=ROUND_HALF_EVEN)
        self.fills.append(Fill(f"demo-s{self.seed}-{self.acct}-f{len(self.fills)}", self.acct, inst.symbol, side,
                               size, price, fee_usd, self.t, mode))
        return price

    def fund(self, leverage: float) -> None:
        """USD collateral for the gross notional at ``leverage`` (option sellers: plus the premium)."""
        usd = self.notional_usd / leverage + self.short_premium_usd
        self.deposit(self.settle, Decimal(max(100, round(usd, -1))).quantize(Decimal(1)))

    # ---- archetypes
    def directional_perp(self, notional: float) -> None:
        inst = self.of_kind(self.underlying(), Kind.PERPETUAL)[0]
        side = self.rng.choice((Side.BUY, Side.SELL))
        size = self.size_for(inst, notional)
        isolated = self.rng.random() < 0.2
        self.trade(inst, side, size, mode=MarginMode.ISOLATED if isolated else None)
        roll = self.rng.random()
        if roll < 0.3:
            self.trade(inst, side, self.lots(inst, float(size) * 0.5))
        elif roll < 0.5:
            self.trade(inst, Side.SELL if side == Side.BUY else Side.BUY, self.lots(inst, float(size) * 0.4))
        leverage = self.rng.uniform(1.5, 4.0)
        self.fund(leverage)
        if isolated:   # the whole margin of this position sits in it
            self.isolate(inst, Decimal(max(10, round(self.notional_usd / leverage / 2))))

    def multi_perp(self, notional: float) -> None:
        names = sorted(self.u.underlyings)
        for und in self.rng.sample(names, min(len(names), self.rng.choice((2, 3)))):
            inst = self.of_kind(und, Kind.PERPETUAL)[0]
            side = self.rng.choice((Side.BUY, Side.SELL))
            size = self.size_for(inst, notional / 2)
            self.trade(inst, side, size)
            self.trade(inst, side, self.lots(inst, float(size) * 0.5))
            if self.rng.random() < 0.3:   # flip
                other = Side.SELL if side == Side.BUY else Side.BUY
                self.trade(inst, other, self.lots(inst, float(size) * 2.0))
            else:
                self.trade(inst, Side.SELL if side == Side.BUY else Side.BUY, self.lots(inst, float(size) * 0.5))
        self.fund(self.rng.uniform(2.0, 4.0))

    def calendar_spread(self, notional: float) -> None:
        und = self.underlying()
        futures = self.of_kind(und, Kind.FUTURE)
        far = futures[-1] if futures else self.of_kind(und, Kind.PERPETUAL)[0]
        near = futures[0] if len(futures) > 1 else self.of_kind(und, Kind.PERPETUAL)[0]
        size = self.size_for(far, notional)
        long_far = self.rng.random() < 0.7
        self.trade(far, Side.BUY if long_far else Side.SELL, size)
        self.trade(near, Side.SELL if long_far else Side.BUY, size)
        self.fund(self.rng.uniform(3.0, 6.0))

    def _options(self, und: str) -> list[Instrument]:
        opts = self.of_kind(und, Kind.CALL, Kind.PUT)
        if not opts:
            for other in sorted(self.u.underlyings):
                opts = self.of_kind(other, Kind.CALL, Kind.PUT)
                if opts:
                    break
        return opts

    def _pick_option(self, opts: list[Instrument], kind: Kind, otm: bool) -> Instrument:
        index = self.u.underlyings[opts[0].underlying].index_price_usd
        wanted = [o for o in opts if o.kind == kind and
                  (not otm or (o.strike_usd > index * 1.02 if kind == Kind.CALL else o.strike_usd < index * 0.98))]
        return self.rng.choice(wanted or [o for o in opts if o.kind == kind])

    def long_options(self, notional: float) -> None:
        opts = self._options(self.underlying())
        for _ in range(self.rng.randint(1, 3)):
            opt = self._pick_option(opts, self.rng.choice((Kind.CALL, Kind.PUT)), otm=False)
            self.trade(opt, Side.BUY, self.size_for(opt, notional / 3))
        self.fund(1.0)

    def covered_calls(self, notional: float) -> None:
        opts = self._options(self.underlying())
        call = self._pick_option(opts, Kind.CALL, otm=True)
        perp = self.of_kind(call.underlying, Kind.PERPETUAL)[0]
        size = self.size_for(perp, notional)
        self.trade(perp, Side.BUY, size)
        self.trade(call, Side.SELL, self.lots(call, float(size) * perp.contract_size / call.contract_size))
        self.fund(self.rng.uniform(2.0, 3.0))

    def naked_short_options(self, notional: float) -> None:
        opts = self._options(self.underlying())
        call = self._pick_option(opts, Kind.CALL, otm=True)
        put = self._pick_option(opts, Kind.PUT, otm=True)
        size = self.size_for(call, notional / 2)
        self.trade(call, Side.SELL, size)
        self.trade(put, Side.SELL, size)
        self.fund(self.rng.uniform(0.8, 1.5))

    def hedged_book(self, notional: float) -> None:
        und = self.underlying()
        perp = self.of_kind(und, Kind.PERPETUAL)[0]
        if self.rng.random() < 0.6 or not self.of_kind(und, Kind.CALL):
            # Cash and carry: coin as collateral, the same amount short in the perpetual.
            size = self.size_for(perp, notional)
            coins = (size * Decimal(repr(perp.contract_size))).quantize(COIN_QUANTUM)
            self.deposit(und, coins)
            self.trade(perp, Side.SELL, size)
            self.deposit(self.settle, Decimal(max(100, round(notional * 0.05, -1))).quantize(Decimal(1)))
            return
        # Long straddle, delta-hedged with the perpetual.
        opts = self.of_kind(und, Kind.CALL, Kind.PUT)
        atm = min({o.strike_usd for o in opts}, key=lambda k: abs(k - self.u.underlyings[und].index_price_usd))
        call = next(o for o in opts if o.kind == Kind.CALL and o.strike_usd == atm)
        put = next(o for o in opts if o.kind == Kind.PUT and o.strike_usd == atm and o.expiry_ms == call.expiry_ms)
        size = self.size_for(call, notional / 2)
        self.trade(call, Side.BUY, size)
        self.trade(put, Side.BUY, size)
        self.trade(perp, self.rng.choice((Side.BUY, Side.SELL)), self.lots(perp, float(size) * 0.1))
        self.fund(1.5)

    def market_maker(self, notional: float) -> None:
        inst = self.of_kind(self.underlying(), Kind.PERPETUAL)[0]
        for _ in range(self.rng.randint(6, 14)):
            self.trade(inst, self.rng.choice((Side.BUY, Side.SELL)), self.size_for(inst, notional / 10), maker=True)
        self.fund(self.rng.uniform(2.0, 3.0))

    def high_leverage(self, notional: float) -> None:
        inst = self.of_kind(self.underlying(), Kind.PERPETUAL)[0]
        self.trade(inst, self.rng.choice((Side.BUY, Side.SELL)), self.size_for(inst, notional))
        # 20-50x would start every one of them below MM (IM ≈ 17 % of notional for BTC, ~30 % for SOL).
        self.fund(self.rng.uniform(2.5, 3.2))


def generate_book(universe: Universe, accounts: int, seed: int, start_ms: int,
                  settlement_asset: str = "USDC") -> DemoBook:
    """The demo book (pure and deterministic: same arguments, same records)."""
    if accounts < 0:
        raise ValueError(f"accounts must be >= 0, got {accounts}")
    names = [a for a, _ in ARCHETYPES]
    weights = [w for _, w in ARCHETYPES]
    deposits: list[Deposit] = []
    fills: list[Fill] = []
    kinds: dict[str, str] = {}
    for i in range(accounts):
        rng = random.Random(seed * 1_000_003 + i)
        acct = account_id(i)
        archetype = rng.choices(names, weights)[0]
        notional = min(2_000_000.0, math.exp(rng.gauss(math.log(20_000.0), 1.1)))   # USD, median 20k
        builder = _Account(universe, rng, acct, seed, start_ms, settlement_asset)
        getattr(builder, archetype)(notional)
        deposits.extend(builder.deposits)
        fills.extend(builder.fills)
        kinds[acct] = archetype
    fills.sort(key=lambda f: f.event_time_ms)   # stable: one account's fills stay in order
    return DemoBook(deposits, fills, kinds)


def publish_book(book: DemoBook, common, clock_ms=lambda: int(time.time() * 1000)) -> None:
    """Deposits to account.events, then fills to trades.fills, each keyed by account id."""
    from marginflow.portfolio.adapters.codec import event_to_proto, fill_to_proto
    from marginflow.shared.kafka import ProtoProducer, ensure_topics, new_producer, platform_topics

    topics = common.topics
    ensure_topics(common.bootstrap, [s for s in platform_topics(topics, common.topic_partitions)
                                     if s.name in (topics.fills, topics.account_events)])
    producer = ProtoProducer(new_producer(common.bootstrap, "demo-book", linger_ms=20), "demo-book")
    try:
        now = clock_ms()
        for dep in book.deposits:
            producer.send(topics.account_events, dep.account_id, event_to_proto(dep, "demo-book", now))
        producer.flush()
        for fill in book.fills:
            producer.send(topics.fills, fill.account_id, fill_to_proto(fill, "demo-book", now))
        producer.flush()
    finally:
        producer.close()


@dataclasses.dataclass(frozen=True)
class DemoSettings:
    """Defaults of the command-line options, from the environment (the supervisor sets these)."""

    accounts: int = env("MF_DEMO_ACCOUNTS", non_negative_int, 10_000, "demo book: number of accounts")
    seed: int = env("MF_DEMO_SEED", non_negative_int, 7, "demo book: random seed")


def main(argv: list[str] | None = None) -> int:
    from marginflow.shared.config import CommonSettings, ConfigError, load
    from marginflow.shared.universe import platform_universe

    try:
        defaults = load(DemoSettings)
    except ConfigError as exc:
        print(f"demo-book: configuration error: {exc}", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(prog="python -m marginflow.portfolio.demo_book", description=__doc__.split("\n")[0])
    parser.add_argument("--accounts", type=int, default=defaults.accounts,
                        help="number of accounts (default MF_DEMO_ACCOUNTS or 10,000)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="random seed (same seed, same book)")
    parser.add_argument("--start-ms", type=int, default=0,
                        help="event time of the first fills, epoch ms (default: now; fix it for identical books)")
    parser.add_argument("--settlement-asset", default="USDC")
    parser.add_argument("--dry-run", action="store_true", help="generate and summarise, publish nothing")
    args = parser.parse_args(argv)
    if args.accounts < 0:
        parser.error("--accounts must be >= 0")
    try:
        common = load(CommonSettings)
    except ConfigError as exc:
        print(f"demo-book: configuration error: {exc}", file=sys.stderr)
        return 2
    now_ms = int(time.time() * 1000)
    universe = platform_universe(common, now_ms)
    start_ms = args.start_ms or common.universe_as_of_ms(now_ms)
    started = time.perf_counter()
    book = generate_book(universe, args.accounts, args.seed, start_ms, args.settlement_asset)
    generated = time.perf_counter() - started
    print(f"demo book: {args.accounts} accounts, {len(book.deposits)} deposits, {len(book.fills)} fills "
          f"(seed {args.seed}, generated in {generated:.1f}s): {book.summary()}")
    if not args.dry_run:
        started = time.perf_counter()
        publish_book(book, common)
        print(f"published to {common.topics.account_events} and {common.topics.fills} "
              f"in {time.perf_counter() - started:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
