"""Fixtures shared by the launcher's tests."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from launcher import ibc


@pytest.fixture
def shm_dir() -> Iterator[Path]:
    """A fresh directory in /dev/shm, where the launcher keeps IBC's config (memory, never disk)."""
    base = Path("/dev/shm")
    if not ibc.is_memory_backed(base):
        pytest.skip("/dev/shm is not tmpfs here")
    path = base / f"launcher-test-{uuid.uuid4().hex}"
    yield path
    shutil.rmtree(path, ignore_errors=True)
