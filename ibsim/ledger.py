"""The accounts: cash and positions per account, exchange rates, and the valuation IB reports for them
(account values, portfolio, account summary tags, margins, PnL). Broker (broker.py) books trades into them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .instrument_spec import USD_RATES
from .market import Instrument
from .order_rules import MARGIN_REJECTION

# Initial and maintenance margin per unit of gross position value (Reg T stocks and ETFs, a futures SPAN stand-in).
INIT_MARGIN = {"STK": 0.25, "FUT": 0.06}
MAINT_MARGIN = {"STK": 0.20, "FUT": 0.05}


@dataclass
class Position:
    """One holding of a simulated account: quantity, average cost per unit (multiplier included, as IB reports it) and
    realized P&L.
    """

    quantity: float = 0.0
    avgCost: float = 0.0  # per unit, multiplier included, as IB reports it
    realized: float = 0.0


@dataclass
class Account:
    """A simulated account: base currency, cash by currency, positions by instrument key, realized P&L by key.

    `fx`: IB's virtual FX positions by pair ("FX Portfolio"): the sum of the pair's trades, average price and
    realized P&L in the quote currency. Reported with the positions and the portfolio (IB Gateway's "Include FX
    positions when sending portfolio", on by default), never valued: the cash balances are the money."""

    id: str
    base: str
    cash: dict[str, float]
    positions: dict[str, Position] = field(default_factory=dict)
    realized: dict[str, float] = field(default_factory=dict)
    fx: dict[str, Position] = field(default_factory=dict)


class Ledger:
    """Valuation of the accounts; Broker sets `accounts` and `instruments`."""

    accounts: dict[str, Account]
    instruments: dict[str, Instrument]

    # -- FX ----------------------------------------------------------------------------------------------------
    def usd_rate(self, cur: str) -> float:
        if cur == "USD":
            return 1.0
        inst = self.instruments.get(f"{cur}.USD")
        if inst is not None:
            return inst.price
        inst = self.instruments.get(f"USD.{cur}")
        if inst is not None:
            return 1.0 / inst.price
        return USD_RATES.get(cur, 1.0)

    def rate(self, cur: str, base: str) -> float:
        return self.usd_rate(cur) / self.usd_rate(base)

    # -- valuation ---------------------------------------------------------------------------------------------
    def portfolio(self, account: str) -> list[tuple[Instrument, Position, float, float, float]]:
        """(instrument, position, market price, market value, unrealized P&L) per position."""
        acct = self.accounts[account]
        out = []
        for key, pos in acct.positions.items():
            inst = self.instruments[key]
            value = pos.quantity * inst.price * inst.multiplier
            unrealized = value - pos.quantity * pos.avgCost
            out.append((inst, pos, inst.price, value, unrealized))
        return out

    def fx_portfolio(self, account: str) -> list[tuple[Instrument, Position, float, float, float]]:
        """The virtual FX positions as portfolio rows: market value and unrealized P&L in the quote currency."""
        out = []
        for key, pos in self.accounts[account].fx.items():
            inst = self.instruments[key]
            value = pos.quantity * inst.price
            out.append((inst, pos, inst.price, value, value - pos.quantity * pos.avgCost))
        return out

    def valuation(self, account: str) -> dict[str, Any]:
        acct = self.accounts[account]
        base = acct.base
        currencies = sorted(set(acct.cash) | {self.instruments[k].currency for k in acct.positions} | {base})
        per: dict[str, dict[str, float]] = {
            c: {
                "cash": acct.cash.get(c, 0.0),
                "stock": 0.0,
                "fut": 0.0,
                "unreal": 0.0,
                "real": acct.realized.get(c, 0.0),
            }
            for c in currencies
        }
        gross = 0.0
        fut_notional = 0.0
        for inst, _pos, _price, value, unrealized in self.portfolio(account):
            row = per[inst.currency]
            rate = self.rate(inst.currency, base)
            if inst.secType == "FUT":
                row["fut"] += unrealized
                fut_notional += abs(value) * rate
            else:
                row["stock"] += value
                gross += abs(value) * rate
            row["unreal"] += unrealized
        rates = {c: self.rate(c, base) for c in currencies}
        nlv_by = {c: r["cash"] + r["stock"] + r["fut"] for c, r in per.items()}
        nlv = sum(nlv_by[c] * rates[c] for c in currencies)
        cash_total = sum(per[c]["cash"] * rates[c] for c in currencies)
        init = INIT_MARGIN["STK"] * gross + INIT_MARGIN["FUT"] * fut_notional
        maint = MAINT_MARGIN["STK"] * gross + MAINT_MARGIN["FUT"] * fut_notional
        available = nlv - init
        excess = nlv - maint
        return {
            "base": base,
            "per": per,
            "rates": rates,
            "nlv_by": nlv_by,
            "NetLiquidation": nlv,
            "TotalCashValue": cash_total,
            "GrossPositionValue": gross,
            "InitMarginReq": init,
            "MaintMarginReq": maint,
            "AvailableFunds": available,
            "ExcessLiquidity": excess,
            "BuyingPower": max(available, 0.0) * 4,
            "EquityWithLoanValue": nlv,
            "Cushion": excess / nlv if nlv else 0.0,
            "UnrealizedPnL": sum(per[c]["unreal"] * rates[c] for c in currencies),
            "RealizedPnL": sum(per[c]["real"] * rates[c] for c in currencies),
        }

    def margin_change(self, account: str, inst: Instrument, signed: float, working: float = 0.0) -> float:
        """The change of initial margin (base currency) if `signed` more of `inst` were held, on top of the
        position and `working` (signed quantity of the account's orders still working in it). Forex is cash: 0."""
        rate = INIT_MARGIN.get(inst.secType)
        if rate is None:
            return 0.0
        pos = self.accounts[account].positions.get(inst.key)
        before = (pos.quantity if pos is not None else 0.0) + working
        unit = inst.price * inst.multiplier * self.rate(inst.currency, self.accounts[account].base)
        return (abs(before + signed) - abs(before)) * unit * rate

    def initial_margin_shortfall(self, account: str, inst: Instrument, signed: float, working: float) -> str | None:
        """IB's rejection text when an order of `signed` quantity, beside `working` still to fill in the instrument,
        would take the initial margin above the equity with loan value; None for one that lowers the margin."""
        if self.margin_change(account, inst, signed, working) <= 0:
            return None
        change = self.margin_change(account, inst, working + signed)  # the working orders' margin is reserved
        v = self.valuation(account)
        after = v["InitMarginReq"] + change
        if after <= v["EquityWithLoanValue"]:
            return None
        return MARGIN_REJECTION.format(equity=v["EquityWithLoanValue"], margin=after, base=v["base"])

    def account_values(self, account: str) -> list[tuple[str, str, str]]:
        """(key, value, currency) rows as updateAccountValue sends them."""
        v = self.valuation(account)
        base = v["base"]
        rows: list[tuple[str, str, str]] = [
            ("AccountCode", account, ""),
            ("AccountType", "INDIVIDUAL", ""),
            ("AccountReady", "true", ""),
            ("Currency", base, base),
            ("RealCurrency", base, base),
        ]
        for tag in (
            "NetLiquidation",
            "TotalCashValue",
            "SettledCash",
            "GrossPositionValue",
            "EquityWithLoanValue",
            "InitMarginReq",
            "MaintMarginReq",
            "FullInitMarginReq",
            "FullMaintMarginReq",
            "AvailableFunds",
            "FullAvailableFunds",
            "ExcessLiquidity",
            "FullExcessLiquidity",
            "BuyingPower",
            "UnrealizedPnL",
            "RealizedPnL",
        ):
            source = {
                "SettledCash": "TotalCashValue",
                "FullInitMarginReq": "InitMarginReq",
                "FullMaintMarginReq": "MaintMarginReq",
                "FullAvailableFunds": "AvailableFunds",
                "FullExcessLiquidity": "ExcessLiquidity",
            }.get(tag, tag)
            rows.append((tag, f"{v[source]:.2f}", base))
        rows.append(("Cushion", f"{v['Cushion']:.6f}", ""))
        totals = {"cash": 0.0, "stock": 0.0, "fut": 0.0, "unreal": 0.0, "real": 0.0, "nlv": 0.0}
        for cur, r in v["per"].items():
            rate = v["rates"][cur]
            rows += [
                ("CashBalance", f"{r['cash']:.2f}", cur),
                ("TotalCashBalance", f"{r['cash']:.2f}", cur),
                ("ExchangeRate", f"{rate:.8f}".rstrip("0").rstrip("."), cur),
                ("NetLiquidationByCurrency", f"{v['nlv_by'][cur]:.2f}", cur),
                ("StockMarketValue", f"{r['stock']:.2f}", cur),
                ("FuturesPNL", f"{r['fut']:.2f}", cur),
                ("UnrealizedPnL", f"{r['unreal']:.2f}", cur),
                ("RealizedPnL", f"{r['real']:.2f}", cur),
            ]
            for name, amount in (("cash", r["cash"]), ("stock", r["stock"]), ("fut", r["fut"])):
                totals[name] += amount * rate
            totals["unreal"] += r["unreal"] * rate
            totals["real"] += r["real"] * rate
            totals["nlv"] += v["nlv_by"][cur] * rate
        rows += [
            ("CashBalance", f"{totals['cash']:.2f}", "BASE"),
            ("TotalCashBalance", f"{totals['cash']:.2f}", "BASE"),
            ("ExchangeRate", "1.00", "BASE"),
            ("NetLiquidationByCurrency", f"{totals['nlv']:.2f}", "BASE"),
            ("StockMarketValue", f"{totals['stock']:.2f}", "BASE"),
            ("FuturesPNL", f"{totals['fut']:.2f}", "BASE"),
            ("UnrealizedPnL", f"{totals['unreal']:.2f}", "BASE"),
            ("RealizedPnL", f"{totals['real']:.2f}", "BASE"),
        ]
        return rows

    def summary(self, account: str, tags: list[str]) -> list[tuple[str, str, str]]:
        """(tag, value, currency) rows for reqAccountSummary."""
        rows = self.account_values(account)
        by_tag: dict[str, list[tuple[str, str, str]]] = {}
        for tag, value, cur in rows:
            by_tag.setdefault(tag, []).append((tag, value, cur))
        out: list[tuple[str, str, str]] = []
        ledger_tags = (
            "CashBalance",
            "TotalCashBalance",
            "ExchangeRate",
            "NetLiquidationByCurrency",
            "StockMarketValue",
            "FuturesPNL",
            "UnrealizedPnL",
            "RealizedPnL",
        )
        for tag in tags:
            if tag.startswith("$LEDGER"):
                _, _, which = tag.partition(":")
                for lt in ledger_tags:
                    for row in by_tag.get(lt, []):
                        base_row = row[2] == "BASE" and which in ("", "ALL")
                        if base_row or (row[2] not in ("BASE", "") and which in ("ALL", row[2])):
                            out.append(row)
                continue
            for row in by_tag.get(tag, []):
                if row[2] in ("", self.accounts[account].base):
                    out.append(row)
                    break
        return out

    # -- booking -----------------------------------------------------------------------------------------------
    def book(
        self, acct: Account, inst: Instrument, signed: float, price: float, comm: float, comm_cur: str
    ) -> float | None:
        """Moves cash and the position for one execution; returns the realized P&L (None when only opening)."""
        acct.cash[comm_cur] = acct.cash.get(comm_cur, 0.0) - comm
        if inst.secType == "CASH":
            base, quote = inst.key.split(".")
            acct.cash[base] = acct.cash.get(base, 0.0) + signed
            acct.cash[quote] = acct.cash.get(quote, 0.0) - signed * price
            virtual = acct.fx.setdefault(inst.key, Position())
            _move(virtual, signed, price, 0.0)  # IB's FX Portfolio: trade prices, commission apart
            if virtual.quantity == 0 and not virtual.realized:
                acct.fx.pop(inst.key, None)
            return None
        mult = inst.multiplier
        unit = price * mult
        if inst.secType == "STK":
            acct.cash[inst.currency] = acct.cash.get(inst.currency, 0.0) - signed * unit
        pos = acct.positions.setdefault(inst.key, Position())
        comm_local = comm * self.rate(comm_cur, inst.currency)
        realized, gross = _move(pos, signed, unit, comm_local)
        if realized is not None:
            if inst.secType == "FUT":
                acct.cash[inst.currency] = acct.cash.get(inst.currency, 0.0) + gross
            acct.realized[inst.currency] = acct.realized.get(inst.currency, 0.0) + realized
        if pos.quantity == 0 and not pos.realized:
            acct.positions.pop(inst.key, None)
        return realized


def _move(pos: Position, signed: float, unit: float, comm_local: float) -> tuple[float | None, float]:
    """Adds `signed` units at `unit` to a position; returns (realized P&L less the commission, None when it only
    opens; the gross realized). IB's avgCost is net of commissions in the economic direction: a long's cost rises
    by them, a short's proceeds fall (price - commission / qty), so covering realizes (sell - buy) x qty - both
    commissions."""
    if pos.quantity == 0 or (pos.quantity > 0) == (signed > 0):
        side = 1.0 if signed > 0 else -1.0
        total = abs(pos.quantity) * pos.avgCost + abs(signed) * unit + side * comm_local
        pos.quantity += signed
        pos.avgCost = total / abs(pos.quantity)
        return None, 0.0
    closing = min(abs(signed), abs(pos.quantity))
    direction = 1 if pos.quantity > 0 else -1
    gross = (unit - pos.avgCost) * closing * direction
    realized = gross - comm_local
    pos.quantity += signed
    if abs(pos.quantity) < 1e-9:
        pos.quantity = 0.0
        pos.avgCost = 0.0
    elif (pos.quantity > 0) != (direction > 0):
        pos.avgCost = unit  # flipped: the rest opened at this price
    pos.realized += realized
    return realized, gross
