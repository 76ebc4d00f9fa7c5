"""Pure exchange-simulator domain: IOC matching against a depth book (no I/O)."""

from marginflow.exchange_sim.domain.matching import (Book, Fill, IocOrder, Level, MatchResult, Side, book_around,
                                                     match_ioc)

__all__ = ["Book", "Fill", "IocOrder", "Level", "MatchResult", "Side", "book_around", "match_ioc"]
