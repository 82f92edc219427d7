"""Making plain data storable in Firestore, which refuses arrays nested directly in arrays."""

from __future__ import annotations

import json
from datetime import date, datetime
from typing import Any


def firestore_safe(value: Any) -> Any:
    """Dicts, lists and scalars as Firestore takes them; an array inside an array becomes its JSON text."""
    return _encode(value, in_array=False)


def _encode(value: Any, in_array: bool) -> Any:
    if isinstance(value, dict):
        return {str(k): _encode(v, in_array=False) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        if in_array:
            return json.dumps(list(value), default=str)
        return [_encode(v, in_array=True) for v in value]
    if value is None or isinstance(value, (bool, int, float, str, datetime)):
        return value
    if isinstance(value, date):
        return value.isoformat()
    return str(value)
