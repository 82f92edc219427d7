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
    if summary:
        lines.append("    " + _gist(summary))
    return lines


def _gist(result: dict[str, Any], width: int = 150) -> str:
    parts = []
    for key, value in result.items():
        if isinstance(value, list):
            parts.append(f"{key}={len(value)}")
        elif isinstance(value, dict):
            parts.append(f"{key}={{{len(value)}}}")
        else:
            parts.append(f"{key}={json.dumps(value, default=str)}")
    text = " ".join(parts)
    return text if len(text) <= width else text[: width - 3] + "..."


def _clock(timestamp: Any) -> str:
    try:
        return datetime.fromisoformat(str(timestamp)).astimezone().strftime("%H:%M:%S")
    except ValueError:
        return "--:--:--"
