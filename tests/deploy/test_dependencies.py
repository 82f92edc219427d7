"""Declared dependencies match what the code imports (issue 19): the consumer's imports are core dependencies,
and what only the container's launcher needs is the `image` extra, which the Dockerfile installs."""

from __future__ import annotations

import ast
import sys
import tomllib
from importlib.metadata import distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def names(requirements: list[str]) -> set[str]:
    return {Requirement(r).name.lower().replace("_", "-") for r in requirements}


def imported_distributions(*packages: str) -> set[str]:
    """Third-party distributions imported anywhere under the given source trees (from the installed files)."""
    owner = {str(file): dist.metadata["Name"] for dist in distributions() for file in dist.files or []}
    modules: set[str] = set()
    for package in packages:
        for path in (REPO / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    modules.update(alias.name for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    # `from google.cloud import firestore`: the name may be the module that a distribution installs.
                    modules.update(f"{node.module}.{alias.name}" for alias in node.names)
    found = set()
    for module in modules:
        parts = module.split(".")
        if parts[0] in sys.stdlib_module_names or parts[0] in ("consumer", "ibsim", "launcher"):
            continue
        # google.* is a namespace many distributions share: the longest module path that one of them installs.
        for i in range(len(parts), 0, -1):
            stem = "/".join(parts[:i])
            dist = owner.get(f"{stem}/__init__.py") or owner.get(f"{stem}.py")
            if dist:
                found.add(dist.lower().replace("_", "-"))
                break
        else:
            raise AssertionError(f"no installed distribution provides {module}")
    return found


@pytest.fixture(scope="module")
def consumer_imports() -> set[str]:
    return imported_distributions("consumer", "ibsim")


def test_everything_the_consumer_imports_is_a_core_dependency(consumer_imports: set[str]):
    missing = consumer_imports - names(PROJECT["dependencies"])
    assert not missing, f"imported by consumer/ or ibsim/ but not in [project] dependencies: {sorted(missing)}"
    assert "referencing" in consumer_imports  # consumer/schemas.py imports it directly


def test_what_only_the_launcher_needs_is_the_image_extra(consumer_imports: set[str]):
    extra = names(PROJECT["optional-dependencies"]["image"])
    assert extra == {"google-cloud-secret-manager"}
    assert not extra & names(PROJECT["dependencies"])
    assert not extra & consumer_imports
    assert extra <= imported_distributions("gateway-image/launcher")
    dockerfile = (REPO / "gateway-image" / "Dockerfile").read_text()
    # Not editable: the wheel carries the schemas and declarations (tests/deploy/test_package.py).
    assert "pip install --no-cache-dir '/app[image]'" in dockerfile
