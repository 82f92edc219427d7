"""Replies as a person reads them on a terminal: one line per reply, plus detail lines where they help."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

_COLOURS = {"ok": "\x1b[32m", "error": "\x1b[31m", "rejected": "\x1b[33m"}
_RESET = "\x1b[0m"
_ORDER_LISTS = (("cancelled", "cancelled"), ("wouldCancel", "would cancel"), ("kept", "kept"))


def reply_line(reply: dict[str, Any], colour: bool = False) -> str:
    status = str(reply.get("status", "?"))
    shown_status = f"{_COLOURS.get(status, '')}{status:<8}{_RESET}" if colour else f"{status:<8}"
    when = _clock(reply.get("finishedAt"))
    flags = " ".join(
        flag for flag, on in (("dry-run", reply.get("dryRun")), ("duplicate", reply.get("duplicate"))) if on
    )
    head = (
        f"{when}  {reply.get('intent') or '-':<22} {shown_status} {reply.get('durationMs', 0):>9.1f} ms  "
        f"{reply.get('tradingMode', '-')}  {reply.get('requestId', '-')}"
    )
    if reply.get("account"):
        head += f"  account {reply['account']}"
    if flags:
        head += f"  [{flags}]"
    return head


def reply_details(reply: dict[str, Any], limit: int = 12) -> list[str]:
    """A few indented lines: the error, or the gist of the result."""
    error = reply.get("error")
    if error:
        return [f"    {error.get('code')}: {error.get('message')}"]
    result = reply.get("result") or {}
    lines: list[str] = []
    rows = result.get("instruments") if isinstance(result.get("instruments"), list) else None
    if rows is None and isinstance(result.get("balances"), list):
        rows = result["balances"]
    for row in (rows or [])[:limit]:
        if "currency" in row and "balance" in row:  # cash-balancer
            lines.append(
                f"    {row['currency']:<8} balance {row['balance']:>14,.2f}  {row.get('action', ''):<8} "
                f"{row.get('order', '')!s:>10}  {row.get('outcome', row.get('reason', ''))}"
            )
        else:  # allocation, close-all: one line per instrument
            lines.append(
                f"    {row.get('instrument', '?'):<8} target {row.get('target', 0):>10g}  "
                f"current {row.get('current', 0):>10g}  order {row.get('order', 0):>+10g}  "
                f"{row.get('outcome', '')} {row.get('orderRef', '')}".rstrip()
            )
    if rows and len(rows) > limit:
        lines.append(f"    ... and {len(rows) - limit} more")
    # Working orders a trading intent cancelled (or, dry run, would cancel) or left alone: each one matters.
    for key, verb in _ORDER_LISTS:
        for order in result.get(key) or []:
            lines.append(
                f"    {verb:<13} {order.get('instrument', '?'):<8} {order.get('quantity', 0):>+10g}  "
                f"{order.get('status', '')} filled {order.get('filled', 0):g}  {order.get('orderRef', '')}  "
                f"({order.get('reason', '')})"
            )
    shown = {"instruments", "balances"} if rows else set()
    summary = {k: v for k, v in result.items() if k not in shown | {key for key, _ in _ORDER_LISTS}}
    lines.extend("    " + line for line in _gist(summary))
    return lines


def _gist(result: dict[str, Any], width: int = 110, items: int = 8) -> list[str]:
    """The rest of a result as `key=value` parts, wrapped between parts (never inside a word or number).

    A mapping shows its entries (`orders(sent=41, filled=41)`, `prices(SPY=550.1, ...)`), not its size: `{2}` read
    as "two orders" when it meant "an object with two keys".
    """
    parts = [f"{key}={_shown(value, items)}" for key, value in result.items()]
    lines: list[str] = []
    for part in parts:
        if lines and len(lines[-1]) + 2 + len(part) <= width:
            lines[-1] += "  " + part
        else:
            lines.append(part)
    return lines


def _shown(value: Any, items: int) -> str:
    if isinstance(value, list):
        return str(len(value))
    if isinstance(value, dict):
        entries = [f"{k}={_entry(v)}" for k, v in list(value.items())[:items]]
        if len(value) > items:
            entries.append(f"+{len(value) - items} more")
        return f"({', '.join(entries)})"
    return json.dumps(value, default=str)


def _entry(value: Any) -> str:
    if isinstance(value, dict):
        if "status" in value:  # a strategy's outcome
            reason = value.get("reason")
            return f"{value['status']}" + (f" ({reason})" if reason else "")
        return f"({len(value)} entries)"
    if isinstance(value, list):
        return f"[{len(value)}]"
    if isinstance(value, float):
        return f"{value:g}"
    return json.dumps(value, default=str) if not isinstance(value, str) else value


def _clock(timestamp: Any) -> str:
    try:
        return datetime.fromisoformat(str(timestamp)).astimezone().strftime("%H:%M:%S")
    except ValueError:
        return "--:--:--"
