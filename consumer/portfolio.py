"""From target weights to one netted order per instrument, and from fills back to strategies. Pure arithmetic.

Quantities are signed (positive buys/longs). Every rounding is towards zero, so no strategy is ever sized above
its allotment and a fill is never attributed beyond what a strategy asked for.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

EPSILON = 1e-9


def target_quantity(capital: float, weight: float, price: float, multiplier: float, fx_rate: float) -> int:
    """Whole contracts for `weight` of `capital` (base currency) at `price` (instrument currency)."""
    unit_value = price * multiplier * fx_rate
    if not (unit_value > 0 and math.isfinite(unit_value)):
        raise ValueError(f"cannot size at price {price} x multiplier {multiplier} x fx {fx_rate}")
    return math.trunc(capital * weight / unit_value + EPSILON * math.copysign(1, weight))


@dataclass
class Leg:
    """One instrument's trade: what each strategy wants to change, and the net order that carries it."""

    con_id: int
    targets: dict[str, float] = field(default_factory=dict)
    current: dict[str, float] = field(default_factory=dict)
    working: dict[str, float] = field(default_factory=dict)

    @property
    def strategies(self) -> list[str]:
        return sorted(set(self.targets) | set(self.current) | set(self.working))

    @property
    def deltas(self) -> dict[str, float]:
        """Per strategy: target minus held minus what its working orders will still add."""
        out = {}
        for s in self.strategies:
            d = self.targets.get(s, 0.0) - self.current.get(s, 0.0) - self.working.get(s, 0.0)
            if abs(d) > EPSILON:
                out[s] = d
        return out

    @property
    def quantity(self) -> float:
        """The net order: strategies wanting opposite trades cancel out inside the account."""
        return sum(self.deltas.values())

    @property
    def internal_transfer(self) -> dict[str, float]:
        """The part of the deltas that nets to zero: moved between strategies' books without an order.

        Only when the net order is zero is the whole of it a transfer; otherwise the fills are attributed in
        proportion to the deltas (which performs the same cross as the order fills).
        """
        deltas = self.deltas
        return deltas if deltas and abs(self.quantity) < EPSILON else {}


def net_legs(
    targets: Mapping[str, Mapping[int, float]],
    current: Mapping[str, Mapping[int, float]],
    working: Mapping[str, Mapping[int, float]],
) -> dict[int, Leg]:
    """Legs for every instrument any of these strategies targets, holds, or has orders working in.

    An instrument a strategy holds but no longer targets gets target zero: that is how it is closed.
    """
    legs: dict[int, Leg] = {}

    def leg(con_id: int) -> Leg:
        return legs.setdefault(con_id, Leg(con_id))

    for strategy, positions in current.items():
        for con_id, qty in positions.items():
            if abs(qty) > EPSILON:
                leg(con_id).current[strategy] = qty
                leg(con_id).targets.setdefault(strategy, 0.0)
    for strategy, orders in working.items():
        for con_id, qty in orders.items():
            if abs(qty) > EPSILON:
                leg(con_id).working[strategy] = qty
                leg(con_id).targets.setdefault(strategy, 0.0)
    for strategy, wanted in targets.items():
        for con_id, qty in wanted.items():
            leg(con_id).targets[strategy] = qty
    return legs


def attribute(
    shares: Mapping[str, float], order_quantity: float, filled: float, booked: Mapping[str, float] | None = None
) -> dict[str, int]:
    """Each strategy's part of the first `filled` units of an order it shares, given the parts already `booked`.

    Shares are the strategies' signed deltas and may have opposite signs (a netted order); each part moves from
    zero towards its share in proportion to the fill, so a full fill gives every strategy exactly its delta.
    Parts are whole, add up to `filled`, and never move back: a part already booked is a fact in the books.
    """
    if abs(order_quantity) < EPSILON or not shares:
        return {}
    parts = {s: round((booked or {}).get(s, 0)) for s in shares}
    if abs(filled - order_quantity) < EPSILON:
        return {s: round(q) for s, q in shares.items()}
    ratio = filled / order_quantity
    ideal = {s: q * ratio for s, q in shares.items()}
    for s, share in shares.items():
        gap = ideal[s] - parts[s]
        if gap * share > 0:  # only ever towards the strategy's share
            parts[s] += math.trunc(gap)
    remainder = round(filled - sum(parts.values()))
    while remainder:
        direction = 1 if remainder > 0 else -1
        room = [s for s, q in shares.items() if q * direction > 0 and abs(parts[s]) < abs(q)]
        if not room:  # cannot happen for fills within the order; never loop forever on bad input
            raise ValueError(f"cannot attribute {filled} of {order_quantity} among {dict(shares)}")
        # The strategy furthest behind its proportional part gets the next unit.
        s = max(room, key=lambda s: ((ideal[s] - parts[s]) * direction, s))
        parts[s] += direction
        remainder -= direction
    return parts


def scale_parts(parts: Mapping[str, float], total: float) -> dict[str, float]:
    """The strategies' `parts` of one execution, scaled to `total` (IB's correction of its shares): whole where the
    parts and the total are (largest remainders: each part moves by less than one share from its proportional
    size, and they add up to `total`), in proportion otherwise. Parts may have opposite signs (a netted order)."""
    before = sum(parts.values())
    if abs(before) < EPSILON:
        return dict(parts)
    ideal = {s: q * total / before for s, q in parts.items()}
    whole = all(abs(q - round(q)) < EPSILON for q in [*parts.values(), total])
    if not whole:
        return ideal
    scaled = {s: float(math.trunc(q)) for s, q in ideal.items()}
    remainder = round(total - sum(scaled.values()))
    direction = 1 if remainder > 0 else -1
    # The parts furthest from their proportional size in the remainder's direction get one share each.
    for s in sorted(ideal, key=lambda s: ((ideal[s] - scaled[s]) * direction, s), reverse=True)[: abs(remainder)]:
        scaled[s] += direction
    return scaled


def gross_exposure(weights_by_strategy: Mapping[str, Mapping[str, float]], shares: Mapping[str, float]) -> float:
    """Sum of |weight| x the strategy's capital share: the leverage the targets would take on."""
    return sum(shares.get(s, 0.0) * sum(abs(w) for w in weights.values()) for s, weights in weights_by_strategy.items())
