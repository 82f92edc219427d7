"""One JSON object per line on stderr, the shape Cloud Logging parses (severity, message). Never given a secret."""

from __future__ import annotations

import json
import sys
import time
from typing import Any


def log(message: str, severity: str = "INFO", **fields: Any) -> None:
    record = {"severity": severity, "message": message, "component": "launcher", "time": time.time(), **fields}
    print(json.dumps(record, default=str), file=sys.stderr, flush=True)
