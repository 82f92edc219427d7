"""ibsim stays a set of modules a reader can hold in their head, each one named where docs/ibsim.md lays them out."""

from __future__ import annotations

import re
from pathlib import Path

import ibsim

PACKAGE = Path(ibsim.__file__).parent
DOCS = PACKAGE.parent / "docs" / "ibsim.md"
MAX_LINES = 450


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.glob("*.py") if p.name != "__init__.py")


def test_no_ibsim_module_is_over_the_size_a_reader_can_hold() -> None:
    sizes = {p.name: len(p.read_text().splitlines()) for p in modules()}
    assert len(sizes) > 10
    over = {name: n for name, n in sizes.items() if n > MAX_LINES}
    assert not over, f"split these by concern (docs/ibsim.md, Code layout): {over}"


def test_the_code_layout_in_the_docs_names_every_module() -> None:
    text = DOCS.read_text()
    layout = text[text.index("## Code layout") :]
    layout = layout[: layout.index("\n## ", 1)]
    named = set(re.findall(r"`(\w+\.py)`", layout))
    missing = {p.name for p in modules()} - named - {"__main__.py"}
    assert not missing, f"docs/ibsim.md 'Code layout' does not say what these are for: {sorted(missing)}"
