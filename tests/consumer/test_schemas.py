"""Every JSON Schema in schemas/ is a valid schema and is used by the code."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from consumer.intents import builtin_intents
from consumer.schemas import Schemas, format_checker

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", Schemas().names())
def test_schema_is_valid(name: str) -> None:
    document = Schemas().document(name)
    Draft202012Validator.check_schema(document)
    assert document.get("$id") == name, "each schema's $id is its path under schemas/, which $refs rely on"


def test_every_schema_is_used() -> None:
    code = "\n".join(p.read_text() for p in (ROOT / "consumer").rglob("*.py"))
    referenced = set(re.findall(r'"([a-z0-9/_-]+\.schema\.json)"', code))
    referenced |= {intent.schema for intent in builtin_intents().values()}
    schemas = Schemas()
    pending = list(referenced)
    while pending:  # schemas reached through $ref from a used one are used too
        name = pending.pop()
        if not schemas.has(name):
            continue
        for ref in re.findall(r'"\$ref": "([^"#]+)', json.dumps(schemas.document(name))):
            target = ref if "/" in ref or "/" not in name else f"{name.rsplit('/', 1)[0]}/{ref}"
            if target not in referenced:
                referenced.add(target)
                pending.append(target)
    unused = sorted(set(Schemas().names()) - referenced)
    assert not unused, f"schemas nobody validates against: {unused}"


def test_every_intent_has_a_params_schema() -> None:
    schemas = Schemas()
    missing = [i.name for i in builtin_intents().values() if not schemas.has(i.schema)]
    assert not missing, f"intents without schemas/intents/<name>.schema.json: {missing}"


def test_the_consumer_validates_against_the_repository_schemas() -> None:
    """What a default Schemas() loads is every schema file of the repository's schemas/, as it is on disk."""
    on_disk = {
        str(p.relative_to(ROOT / "schemas")): json.loads(p.read_text())
        for p in (ROOT / "schemas").rglob("*.schema.json")
    }
    schemas = Schemas()
    assert on_disk, "no schema files found under schemas/"
    assert sorted(schemas.names()) == sorted(on_disk)
    assert all(schemas.document(name) == document for name, document in on_disk.items())


def test_no_schema_or_declaration_repeats_a_key():
    """json.load keeps the last of two equal keys silently: a merge that wrote `strategies` twice dropped a field."""

    def unique(pairs: list[tuple[str, object]]) -> dict[str, object]:
        keys = [k for k, _ in pairs]
        assert len(keys) == len(set(keys)), f"repeated keys {sorted(k for k in keys if keys.count(k) > 1)}"
        return dict(pairs)

    files = sorted((ROOT / "schemas").rglob("*.json"))
    assert len(files) > 10
    for path in files:
        json.loads(path.read_text(), object_pairs_hook=unique)


def test_every_format_the_schemas_use_is_checked():
    """jsonschema skips a format whose checker package is missing: the schemas would then accept anything there."""
    from jsonschema import Draft202012Validator

    used = {m for p in (ROOT / "schemas").rglob("*.json") for m in re.findall(r'"format":\s*"([\w-]+)"', p.read_text())}
    # a new standard format needs its checker package in pyproject.toml; one of the product's, consumer.schemas
    assert used == {"date-time", "ib-good-after-time"}, used
    assert used <= set(format_checker().checkers)
    checker = Draft202012Validator.FORMAT_CHECKER
    assert checker.conforms("2099-12-31T00:00:00Z", "date-time")
    for odd in ("20991231T000000Z", "2099-W01-1T00:00Z", "2099-12-31", "2099-12-31T00:00:00"):
        assert not checker.conforms(odd, "date-time"), odd
