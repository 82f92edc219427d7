"""Where the files the consumer reads at run time are: the JSON Schemas and the Pub/Sub and schedule declarations.

Their single source stays at the top of the repository (`schemas/`, `infra/pubsub.yaml`, `infra/schedules.yaml`:
Terraform and the docs read them there); `consumer/_data/` holds symbolic links to them, which the wheel ships as
package data (pyproject, `[tool.setuptools.package-data]`), so an installed consumer needs no source tree beside it.
The paths are resolved: in a checkout they are the top-level files themselves.
"""

from __future__ import annotations

from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent / "_data"
SCHEMA_DIR = (DATA_DIR / "schemas").resolve()
PUBSUB_DECLARATION = (DATA_DIR / "pubsub.yaml").resolve()
SCHEDULES_DECLARATION = (DATA_DIR / "schedules.yaml").resolve()
