"""The forex rule: a strategy's IDEALPRO holding is a currency exposure, backed by the account's cash balances.

IB books an IDEALPRO fill as two cash movements and no position (BUY 10,000 EUR.USD at 1.085: EUR +10,000,
USD -10,850). A book holding pair BASE.QUOTE keeps `quantity` (units of BASE) and `quoteAmount` (units of QUOTE its
fills moved, negative when it paid). Its claims on the account's cash are those two amounts, except in the account's
base currency, which every trade settles in and no book can claim. So EUR.USD on a USD account claims EUR
`quantity`; USD.JPY claims JPY `quoteAmount`; a cross EUR.GBP claims both.

Per currency, the books' claims are compared with the broker's cash balance: the part of the balance in the
claims' direction, up to their size, backs them; what the claims exceed is a difference (reconcile reports it, and
fix books it to `unallocated`); the rest of the balance is free cash, which no strategy owns and which the
cash-balancer may convert.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

# Cash balances come from the gateway with two decimals.
CASH_TOLERANCE = 0.01


def is_forex(position: Mapping[str, Any]) -> bool:
    return position.get("secType") == "CASH"


def pair_currencies(position: Mapping[str, Any]) -> tuple[str, str]:
    """(BASE, QUOTE) of a forex holding; `symbol` is EUR.USD (documents written before views.contract was the one
    serializer may say EUR)."""
    return str(position.get("symbol", "")).split(".")[0], str(position.get("currency", ""))


def position_claims(position: Mapping[str, Any], account_base: str) -> dict[str, float]:
    """What one forex holding claims, per currency other than the account's base currency."""
    base, quote = pair_currencies(position)
    out: dict[str, float] = {}
    for currency, amount in ((base, float(position.get("quantity", 0.0))), (quote, quote_amount(position))):
        if currency and currency != account_base and amount:
            out[currency] = out.get(currency, 0.0) + amount
    return out


def quote_amount(position: Mapping[str, Any]) -> float:
    return float(position.get("quoteAmount", 0.0) or 0.0)


@dataclass
class CurrencyLine:
    """One currency of the forex rule: the broker's cash balance beside what each book claims in it.

    `backed` is the part of the balance that covers the claims, `difference` the claims it does not cover and `free`
    the cash no book claims (the only part the cash-balancer may convert); `as_dict` is the reply's line.
    """

    currency: str
    broker: float
    by_book: dict[str, float] = field(default_factory=dict)

    @property
    def books(self) -> float:
        return sum(self.by_book.values())

    @property
    def backed(self) -> float:
        """The part of the claims the balance accounts for. A long claim is backed by the balance up to its size
        (cash that left the account cannot be sold); a short claim, currency the books owe, always is: the balance
        is the claims plus the free cash, so a strategy's short in an account holding the currency leaves it free
        cash larger by the short (converting only what it saw left the account flat behind the strategy's books)."""
        claimed = self.books
        if abs(claimed) <= CASH_TOLERANCE:
            return 0.0
        if claimed > 0:
            return min(max(self.broker, 0.0), claimed)
        return claimed

    @property
    def difference(self) -> float:
        """Long claims the broker's cash does not back (0, or negative)."""
        gap = self.backed - self.books
        return gap if abs(gap) > CASH_TOLERANCE else 0.0

    @property
    def free(self) -> float:
        """Cash no book claims: the only part the cash-balancer may convert."""
        return self.broker - self.backed

    def as_dict(self) -> dict[str, Any]:
        return {
            "currency": self.currency,
            "broker": self.broker,
            "books": round(self.books, 2),
            "byStrategy": {b: round(q, 2) for b, q in sorted(self.by_book.items())},
            "freeCash": round(self.free, 2),
            "difference": round(self.difference, 2),
        }


def currency_lines(
    holdings: Mapping[str, Mapping[int, Mapping[str, Any]]], balances: Mapping[str, float], account_base: str
) -> dict[str, CurrencyLine]:
    """Every currency other than the base that a book claims or the broker holds, with both sides."""
    lines: dict[str, CurrencyLine] = {}
    for currency, balance in balances.items():
        if currency != account_base:
            lines[currency] = CurrencyLine(currency, balance)
    for book, positions in holdings.items():
        for position in forex_positions(positions.values()):
            for currency, amount in position_claims(position, account_base).items():
                line = lines.setdefault(currency, CurrencyLine(currency, 0.0))
                line.by_book[book] = line.by_book.get(book, 0.0) + amount
    return lines


def forex_positions(positions: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [p for p in positions if is_forex(p)]


def drawn_currencies(pair: str, quote: str, quantity: float, account_base: str) -> set[str]:
    """The currencies other than the account's base that an order on `pair` (BASE.QUOTE) pays out: a sale pays
    BASE, a purchase pays QUOTE."""
    base = pair.split(".")[0]
    paid = base if quantity < 0 else quote
    return {paid} - {account_base, ""}


def unbacked(lines: Mapping[str, CurrencyLine], drawn: Iterable[str]) -> list[dict[str, Any]]:
    """The lines of `drawn` whose books claim cash the broker does not hold."""
    return [lines[c].as_dict() for c in sorted(set(drawn)) if c in lines and lines[c].difference]
