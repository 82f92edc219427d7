"""Replies as a person reads them on a terminal: one line per reply, plus detail lines where they help."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

_COLOURS = {"ok": "\x1b[32m", "error": "\x1b[31m", "rejected": "\x1b[33m"}
_RESET = "\x1b[0m"


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
    if "lines" in result:  # trading intents: one line per instrument
        for line in result["lines"][:limit]:
            lines.append(
                "    {symbol:<8} target {target:>10g}  current {current:>10g}  order {order:>+10g}  {status}".format(
                    symbol=line.get("symbol", "?"),
                    target=line.get("target", 0),
                    current=line.get("current", 0),
                    order=line.get("orderQuantity", 0),
                    status=line.get("status", ""),
                )
            )
        if len(result["lines"]) > limit:
            lines.append(f"    ... and {len(result['lines']) - limit} more")
    summary = {k: v for k, v in result.items() if k != "lines"}
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
