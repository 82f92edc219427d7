"""Average-cost P&L of one book's position in one instrument. Pure arithmetic, no I/O.

Amounts are in the instrument's currency. `avg_cost` is per unit of the instrument's price (multiplier NOT
applied), so a position's cost is |quantity| * avg_cost * multiplier. The commission of a fill that opens makes
the position worse (a long's cost rises, a short's proceeds fall); a commission on a fill that reduces the
position is realized (a loss), as IB does (ibsim/ledger.py books longs the same way).
"""

from __future__ import annotations

from dataclasses import dataclass

from consumer.portfolio import EPSILON


@dataclass(frozen=True, slots=True)
class Lot:
    """A book's position in one instrument: signed quantity and average cost per unit (instrument currency)."""

    quantity: float = 0.0
    avg_cost: float = 0.0


@dataclass(frozen=True, slots=True)
class Booking:
    """The position after a trade, and what the trade realized (instrument currency, commission included)."""

    lot: Lot
    realized: float


def trade(lot: Lot, quantity: float, price: float, multiplier: float = 1.0, commission: float = 0.0) -> Booking:
    """A fill of signed `quantity` at `price`, commission in the instrument's currency.

    Increasing |position| blends the cost; reducing it realizes (price - avg_cost) * closed * multiplier * sign;
    crossing zero realizes the closed part and opens the rest at the fill price. The commission goes to the cost of
    what is opened, in proportion, and the rest is realized.
    """
    if abs(quantity) < EPSILON:
        return Booking(lot, -commission)
    held = lot.quantity
    same_side = abs(held) < EPSILON or (held > 0) == (quantity > 0)
    closing = 0.0 if same_side else min(abs(quantity), abs(held))
    opening = abs(quantity) - closing
    opened_commission = commission * opening / abs(quantity)
    realized = 0.0
    if closing:
        direction = 1.0 if held > 0 else -1.0
        realized = (price - lot.avg_cost) * closing * multiplier * direction
    realized -= commission - opened_commission
    after = held + quantity
    if abs(after) < EPSILON:
        return Booking(Lot(0.0, 0.0), realized)
    if opening:
        kept = abs(held) if same_side else 0.0
        # A long's commission raises what it cost; a short's lowers what its sale brought in.
        side = 1.0 if after > 0 else -1.0
        cost = kept * lot.avg_cost + opening * price + side * opened_commission / multiplier
        return Booking(Lot(after, cost / abs(after)), realized)
    return Booking(Lot(after, lot.avg_cost), realized)


def late_commission(lot: Lot, fill_quantity: float, multiplier: float, commission: float) -> Booking:
    """A commission reported after its fill was booked (IB sends it separately).

    If the book still holds a position on the fill's side, the fill opened (part of) it: the commission is added
    to its cost. Otherwise the fill closed something: the commission is realized. (A fill that crossed zero puts its
    whole commission into the cost of what it opened; the total of realized and unrealized is the same either way.)
    """
    if abs(lot.quantity) > EPSILON and (lot.quantity > 0) == (fill_quantity > 0):
        extra = commission / (lot.quantity * multiplier)  # signed: a short's commission lowers its proceeds
        return Booking(Lot(lot.quantity, lot.avg_cost + extra), 0.0)
    return Booking(lot, -commission)


def transfer(
    giver: Lot, receiver: Lot, quantity: float, price: float, multiplier: float = 1.0
) -> tuple[Booking, Booking]:
    """Moves signed `quantity` from `giver` to `receiver` at the market `price` (a netted-out leg, no order).

    The giver realizes (price - avg_cost) on what it gives; the receiver opens at `price`. Nothing is charged, so
    the two books' realized plus unrealized P&L together is unchanged: the transfer books no gain against the broker.
    """
    return trade(giver, -quantity, price, multiplier), trade(receiver, quantity, price, multiplier)


def unrealized(lot: Lot, price: float, multiplier: float = 1.0) -> float:
    """Mark-to-market gain of the position at `price`, instrument currency."""
    return (price - lot.avg_cost) * lot.quantity * multiplier
