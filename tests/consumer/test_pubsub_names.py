"""Topic and subscription names have one source: infra/pubsub.yaml declares them, Settings (consumer/config.py)
carries them into the code. Anywhere else in consumer/, a spelled name would keep working until someone renames
one through REPLY_TOPIC or Terraform, and then talk to a topic nobody publishes to."""

from __future__ import annotations

import ast
from pathlib import Path

import yaml

from consumer.config import Settings
from consumer.data import PUBSUB_DECLARATION

ROOT = Path(__file__).resolve().parents[2] / "consumer"
DECLARED = yaml.safe_load(PUBSUB_DECLARATION.read_text())
NAMES = {*DECLARED["topics"], *DECLARED["subscriptions"]}
# Where a name may be spelled: Settings' defaults, checked against the declaration below.
SOURCE = ROOT / "config.py"
# The same words that are not Pub/Sub names, each with its reason.
ALLOWED = {("metrics.py", "intents"): "the counter family of handled intents, not the topic"}


def _strings(tree: ast.AST) -> list[ast.Constant]:
    """String constants, docstrings left out (prose may name a topic)."""
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings
    ]


def spelled_names(source: str, where: str) -> list[str]:
    hits = []
    for node in _strings(ast.parse(source)):
        for name in NAMES:
            # `intent-replies-cli` spells the reply topic too; `intents/...` (a schema path) is not a name.
            spelled = node.value == name or node.value.startswith(f"{name}-")
            if spelled and (Path(where).name, node.value) not in ALLOWED:
                hits.append(f"{where}:{node.lineno}: {node.value!r}")
    return hits


def test_no_topic_or_subscription_name_is_spelled_outside_settings() -> None:
    hits = [
        hit
        for p in sorted(ROOT.rglob("*.py"))
        if p != SOURCE
        for hit in spelled_names(p.read_text(), str(p.relative_to(ROOT.parent)))
    ]
    assert not hits, (
        "use Settings (intents_topic, intents_subscription, reply_topic, dead_letter_topic):\n" + "\n".join(hits)
    )


def test_the_check_sees_a_spelled_name() -> None:
    code = '"""Reads intent-replies."""\nTOPIC = "intent-replies"\nPATH = f"intents/{x}"\nCLI = "intent-replies-cli"\n'
    assert spelled_names(code, "consumer/sample.py") == [
        "consumer/sample.py:2: 'intent-replies'",
        "consumer/sample.py:4: 'intent-replies-cli'",
    ]


def test_settings_name_what_infra_declares() -> None:
    s = Settings()
    consumer_subscription = DECLARED["subscriptions"][s.intents_subscription]
    assert consumer_subscription["topic"] == s.intents_topic
    assert consumer_subscription["deadLetter"]["topic"] == s.dead_letter_topic
    assert consumer_subscription["deadLetter"]["maxDeliveryAttempts"] == s.max_delivery_attempts
    assert s.reply_topic in DECLARED["topics"]
    assert {s.intents_topic, s.reply_topic, s.dead_letter_topic} == set(DECLARED["topics"])
