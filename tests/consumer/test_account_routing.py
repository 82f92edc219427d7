"""Which deployment answers a message (consumer/accounts.py): exactly one, or none when it is another's."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from consumer.accounts import AccountDirectory, Route
from consumer.config import ConfigError, Settings
from consumer.envelope import Delivery
from consumer.intake import RequestDecoder
from consumer.intents import builtin_intents
from consumer.schemas import Schemas

ACCOUNTS_FILE = """
accounts:
  DU111: {aliases: [paper]}
  U222: {aliases: [live]}
  U333: {aliases: [spouse]}
"""


@pytest.fixture
def accounts_file(tmp_path: Path) -> str:
    path = tmp_path / "accounts.yaml"
    path.write_text(ACCOUNTS_FILE)
    return str(path)


def deployment(accounts_file: str, accounts: str, default: bool, mode: str = "paper") -> RequestDecoder:
    settings = Settings.from_env(
        {"IB_ACCOUNTS": accounts, "ACCOUNTS_FILE": accounts_file, "DEFAULT_DEPLOYMENT": "yes" if default else "no",
         "TRADING_MODE": mode}
    )  # fmt: skip
    directory = AccountDirectory.from_settings(settings)
    return RequestDecoder(Schemas(), builtin_intents(), ZoneInfo("America/New_York"), directory=directory)


def answers(decoder: RequestDecoder, body: dict[str, object], **attributes: str) -> tuple[str | None, str | None]:
    """(account whose books answer, problem code), or (None, None) when this deployment leaves the message alone."""
    delivery = Delivery("m-1", json.dumps(body).encode(), attributes)
    address = decoder.address(delivery)
    assert address is not None
    if address.route is Route.IGNORE:
        return None, None
    request = decoder.decode(delivery, address)
    return request.account, request.problem.code if request.problem else None


@pytest.fixture
def fleet(accounts_file: str) -> list[RequestDecoder]:
    """The default deployment serves the paper account; another login manages two live accounts."""
    return [
        deployment(accounts_file, "DU111", default=True),
        deployment(accounts_file, "U222,U333", default=False, mode="live"),
    ]


SUMMARY = {"intent": "summary"}


@pytest.mark.parametrize(
    ("body", "attributes", "expected"),
    [
        (SUMMARY, {"account": "DU111"}, [("DU111", None), (None, None)]),
        (SUMMARY, {"account": "paper"}, [("DU111", None), (None, None)]),
        (SUMMARY, {"account": "U333"}, [(None, None), ("U333", None)]),
        # An alias is the default's alone (the cloud's filters of the others name ids): another's account is
        # answered with its id to address it by, once.
        (SUMMARY, {"account": "spouse"}, [("DU111", "unknown_account"), (None, None)]),
        ({**SUMMARY, "account": "U222"}, {"account": "live"}, [("DU111", "unknown_account"), (None, None)]),
        ({**SUMMARY, "account": "live"}, {"account": "U222"}, [(None, None), ("U222", None)]),
        # Unaddressed: the default serves one account, so it runs there, as before accounts existed.
        (SUMMARY, {}, [("DU111", None), (None, None)]),
        # Nobody serves it: one error, from the default deployment.
        (SUMMARY, {"account": "U999"}, [("DU111", "unknown_account"), (None, None)]),
        # The body names another account than the attribute: refused by the attribute's deployment alone.
        ({**SUMMARY, "account": "U222"}, {"account": "U333"}, [(None, None), ("U333", "conflicting_account")]),
        # Named in the body only: Pub/Sub filters cannot route it, so the default refuses it.
        ({**SUMMARY, "account": "U222"}, {}, [("DU111", "missing_account"), (None, None)]),
        # The account is served in the other mode.
        (SUMMARY, {"account": "U222", "tradingMode": "paper"}, [(None, None), ("U222", "wrong_trading_mode")]),
        ({**SUMMARY, "tradingMode": "paper"}, {"account": "U222"}, [(None, None), ("U222", "wrong_trading_mode")]),
        (
            {**SUMMARY, "tradingMode": "paper"},
            {"account": "U222", "tradingMode": "live"},
            [(None, None), ("U222", "conflicting_trading_mode")],
        ),
        # A broken message still gets its one error reply, from the deployment it is addressed to.
        ({"intent": "no-such"}, {"account": "U222"}, [(None, None), ("U222", "unknown_intent")]),
    ],
)
def test_each_message_is_answered_by_exactly_one_deployment(
    fleet: list[RequestDecoder], body: dict[str, object], attributes: dict[str, str], expected: list[object]
) -> None:
    assert [answers(d, body, **attributes) for d in fleet] == expected


def test_a_default_serving_several_accounts_refuses_an_unaddressed_message(accounts_file: str) -> None:
    default = deployment(accounts_file, "DU111,U333", default=True)
    assert answers(default, SUMMARY) == ("DU111", "missing_account")
    assert answers(default, {**SUMMARY, "account": "U333"}) == ("U333", None)


def test_without_an_accounts_file_unknown_accounts_are_the_defaults_to_refuse() -> None:
    settings = Settings.from_env({"IB_ACCOUNT": "DU111"})
    decoder = RequestDecoder(
        Schemas(), builtin_intents(), ZoneInfo("UTC"), directory=AccountDirectory.from_settings(settings)
    )
    assert answers(decoder, SUMMARY, account="U222") == ("DU111", "unknown_account")
    quiet = AccountDirectory.from_settings(dataclasses.replace(settings, default_deployment=False))
    assert quiet.route({"account": "U222"}).route is Route.IGNORE


@pytest.mark.parametrize(
    ("environ", "fragment"),
    [
        ({}, "IB_ACCOUNTS"),
        ({"IB_ACCOUNTS": "DU111,U444", "ACCOUNTS_FILE": "{file}"}, "does not list U444"),
    ],
)
def test_a_deployment_must_say_which_accounts_it_serves(accounts_file: str, environ: dict, fragment: str) -> None:
    environ = {k: v.format(file=accounts_file) for k, v in environ.items()}
    with pytest.raises(ConfigError, match=fragment):
        AccountDirectory.from_settings(Settings.from_env(environ))


def test_account_lists_are_checked_at_start_up() -> None:
    assert Settings.from_env({"IB_ACCOUNTS": "DU1, U2"}).accounts == ("DU1", "U2")
    assert Settings.from_env({"IB_ACCOUNT": "DU1"}).accounts == ("DU1",)
    for bad in ("DU1,DU1", "DU1/x", ","):
        with pytest.raises(ConfigError, match="IB_ACCOUNTS"):
            Settings.from_env({"IB_ACCOUNTS": bad})


def test_an_alias_naming_two_accounts_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "accounts.yaml"
    path.write_text("accounts:\n  DU1: {aliases: [main]}\n  U2: {aliases: [main]}\n")
    with pytest.raises(ConfigError, match="alias 'main' names two accounts"):
        AccountDirectory.from_settings(Settings.from_env({"IB_ACCOUNT": "DU1", "ACCOUNTS_FILE": str(path)}))


def test_a_job_listing_accounts_runs_only_for_them(accounts_file: str) -> None:
    """infra/schedules.yaml `accounts`: Terraform fires the job once per account; a firing addressed elsewhere did
    not come from it. The slot's key is the same for each account; their claims are apart (docs/firestore.md)."""
    settings = Settings.from_env(
        {"IB_ACCOUNTS": "U222,U333", "ACCOUNTS_FILE": accounts_file, "DEFAULT_DEPLOYMENT": "no", "TRADING_MODE": "live"}
    )
    decoder = RequestDecoder(
        Schemas(),
        builtin_intents(),
        ZoneInfo("America/New_York"),
        {"open-summary": "summary"},
        directory=AccountDirectory.from_settings(settings),
        schedule_accounts={"open-summary": ["DU111", "spouse"]},
    )
    assert answers(decoder, {}, intent="summary", schedule="open-summary", account="U333") == ("U333", None)
    assert answers(decoder, {}, intent="summary", schedule="open-summary", account="U222") == (
        "U222",
        "schedule_mismatch",
    )
    first = decoder.decode(Delivery("m-1", b"", {"intent": "summary", "schedule": "open-summary", "account": "U333"}))
    assert first.request_id.startswith("schedule:open-summary:")


def test_in_the_cloud_a_message_addressed_by_alias_to_another_deployments_account_gets_one_reply(
    fleet: list[RequestDecoder],
) -> None:
    """Both deployments hold the accounts file. In the cloud each non-default subscription filters on its account
    ids (infra/modules/deployment/routing.tf: `attributes.account = "U333"`), so a message addressed `spouse`
    reaches the default deployment's subscription alone, which README and docs/deployment.md promise answers it
    `unknown_account`. The default resolved the alias, found the account served elsewhere and acked it: no reply."""
    default, household = fleet
    attributes = {"account": "spouse"}

    def passes_filter(ids: tuple[str, ...]) -> bool:  # the non-default subscription's Pub/Sub filter
        return attributes["account"] in ids

    answered = {"default": answers(default, SUMMARY, **attributes)}
    if passes_filter(("U222", "U333")):
        answered["household"] = answers(household, SUMMARY, **attributes)
    replied = {name: a for name, a in answered.items() if a != (None, None)}
    assert replied == {"default": ("DU111", "unknown_account")}, "deployments answering 'spouse' (none: no reply)"
    delivery = Delivery("m-1", json.dumps(SUMMARY).encode(), attributes)
    problem = default.decode(delivery, default.address(delivery)).problem
    assert problem is not None
    assert "address the message by its id (the attribute account=U333)" in str(problem)
