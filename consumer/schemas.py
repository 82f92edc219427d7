"""The JSON Schemas in schemas/, loaded once and used for every validation.

Schemas are referenced by their file name relative to schemas/ (e.g. "envelope.schema.json",
"intents/allocation.schema.json"); `$ref`s between them resolve the same way.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from functools import cached_property
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import ValidationError
from referencing import Registry, Resource

from consumer.broker.hours import is_good_after_time
from consumer.data import SCHEMA_DIR
from consumer.errors import clip

MAX_PROBLEMS = 10  # reported per message; the first ones are the most specific


def format_checker() -> FormatChecker:
    """The draft's formats (date-time...) and the product's own: `ib-good-after-time`, an order's goodAfterTime with a
    zone that is one (a pattern cannot tell 'America', a folder of the tz database, from 'UTC')."""
    checker = FormatChecker(formats=())
    checker.checkers = dict(Draft202012Validator.FORMAT_CHECKER.checkers)
    checker.checks("ib-good-after-time")(_good_after_time)
    return checker


def _good_after_time(value: object) -> bool:
    return not isinstance(value, str) or is_good_after_time(value)  # a format says nothing of other types


class SchemaViolation(ValueError):
    """Every problem found, each as 'path: message', most specific first."""

    def __init__(self, schema: str, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.schema = schema
        self.problems = problems


class Schemas:
    """Every JSON Schema under a directory (schemas/, shipped in the package), by its path there.

    Loaded on first use and kept: `validate(name, instance, where)` raises SchemaViolation with every problem, most
    specific first and prefixed with `where`; `names`, `has` and `document` let the tests check every schema. The
    process builds one and shares it (consumer.process): compiling the validators is the slow part.
    """

    def __init__(self, directory: Path = SCHEMA_DIR) -> None:
        self.directory = directory

    @cached_property
    def _documents(self) -> dict[str, dict[str, Any]]:
        return {
            str(p.relative_to(self.directory)): json.loads(p.read_text())
            for p in sorted(self.directory.rglob("*.schema.json"))
        }

    @cached_property
    def _registry(self) -> Registry:
        return Registry().with_resources((name, Resource.from_contents(doc)) for name, doc in self._documents.items())

    @cached_property
    def _validators(self) -> dict[str, Draft202012Validator]:
        checker = format_checker()
        return {
            name: Draft202012Validator(doc, registry=self._registry, format_checker=checker)
            for name, doc in self._documents.items()
        }

    def names(self) -> list[str]:
        return list(self._documents)

    def document(self, name: str) -> dict[str, Any]:
        return self._documents[name]

    def has(self, name: str) -> bool:
        return name in self._documents

    def validate(self, name: str, instance: Any, where: str = "") -> None:
        errors = sorted(self._validators[name].iter_errors(instance), key=lambda e: (list(e.absolute_path), e.message))
        if errors:
            raise SchemaViolation(name, list(_describe(errors[:MAX_PROBLEMS], where)))


def _describe(errors: Iterable[ValidationError], where: str) -> Iterable[str]:
    for error in errors:
        path = where
        for part in error.absolute_path:
            path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
        yield f"{path or '(message)'}: {clip(error.message, 300)}"
