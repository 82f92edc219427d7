"""Which deployment answers a message: addressing by IB account (README, "Accounts and routing").

Every deployment subscribes to the intents topic with a subscription of its own. In the cloud each subscription
filters on the `account` attribute; the emulator ignores filters, so every deployment sees every message and
decides here, before decoding, whether the message is its to answer. The rules give each message exactly one
answering deployment:

- The attribute `account` routes. An account id: the deployment serving that account answers, every other one acks
  the message without effect or reply. An id no deployment serves (not in the accounts file) is answered
  `unknown_account` by the default deployment. An alias (of the accounts file) is the default deployment's alone,
  as in the cloud, where the other subscriptions' filters name ids only (decision 56): it runs there when it names
  an account the default serves, and is answered `unknown_account` naming the id otherwise (every other deployment
  acks it, its own accounts' aliases too: one that cannot resolve it could not tell).
- A message without the attribute goes to the default deployment alone (the cloud filter of the default lets
  unaddressed messages through). It runs there if the default serves exactly one account (today's behaviour) or the
  envelope's `account` names one it serves; otherwise it is answered `missing_account`.
- The envelope's `account` and `tradingMode`, when given, must agree with the attribute and with the deployment.

Pure code: it runs in the Pub/Sub callback thread.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml

from consumer.config import ConfigError, Settings
from consumer.errors import BadRequest, clip


class Route(StrEnum):
    """What a deployment does with a message: serve it (run it or answer its problem) or ignore it (ack, no reply)."""

    SERVE = "serve"  # ours: run it (or answer its problem) with the books of `account`
    IGNORE = "ignore"  # another deployment's: ack, no effect, no reply


@dataclass(frozen=True, slots=True)
class Address:
    """Where a message goes (`AccountDirectory.route`): its route, the served account whose books and reply it gets,
    and the problem to answer instead of running it, if any.
    """

    route: Route
    # The served account whose books and reply the message gets; None only for IGNORE.
    account: str | None
    problem: BadRequest | None = None


@dataclass(frozen=True, slots=True)
class AccountDirectory:
    """The accounts served here, every account any deployment serves, and the aliases that name them."""

    served: tuple[str, ...]
    known: frozenset[str]
    aliases: Mapping[str, str]
    default: bool
    trading_mode: str

    @classmethod
    def from_settings(cls, settings: Settings) -> AccountDirectory:
        if not settings.accounts:
            raise ConfigError("IB_ACCOUNTS (or IB_ACCOUNT): name the accounts this deployment serves")
        known: set[str] = set(settings.accounts)
        aliases: dict[str, str] = {}
        if settings.accounts_file:
            known_in_file, aliases = load_accounts_file(Path(settings.accounts_file))
            missing = set(settings.accounts) - known_in_file
            if missing:
                raise ConfigError(f"ACCOUNTS_FILE {settings.accounts_file} does not list {', '.join(sorted(missing))}")
            known |= known_in_file
        return cls(settings.accounts, frozenset(known), aliases, settings.default_deployment, settings.trading_mode)

    def resolve(self, name: str) -> str | None:
        """The account id a name (id or alias) stands for, or None when no deployment serves it."""
        return resolve_name(name, self.known, self.aliases)

    def route(self, attributes: Mapping[str, str]) -> Address:
        """From the attributes alone: whether this deployment answers the message, and with which account."""
        named = attributes.get("account")
        mode = attributes.get("tradingMode")
        if named in self.known:  # an id: the one name every subscription filter routes on
            if named in self.served:
                return Address(Route.SERVE, named, self._mode_problem(mode, named))
            return Address(Route.IGNORE, None)
        if named and not self.default:
            # An alias, even of an account served here, or an unknown name: the default's. The cloud delivers
            # neither here, and a deployment that cannot resolve it must not leave it unanswered.
            return Address(Route.IGNORE, None)
        if named:
            account = self.aliases.get(named)
            if account in self.served:
                return Address(Route.SERVE, account, self._mode_problem(mode, account))
            return Address(Route.SERVE, self.served[0], unknown_account(named, account))
        if not self.default:
            return Address(Route.IGNORE, None)
        only = self.served[0] if len(self.served) == 1 else None
        problem = self._mode_problem(mode, only) if only else None
        return Address(Route.SERVE, only or self.served[0], problem)

    def settle(self, address: Address, attributes: Mapping[str, str], body: Mapping[str, Any]) -> Address:
        """The address once the envelope is decoded: its `account` and `tradingMode` must agree."""
        if address.problem is not None or address.route is Route.IGNORE:
            return address
        account = address.account
        named = attributes.get("account")
        in_body = body.get("account")
        mode = attributes.get("tradingMode")
        body_mode = body.get("tradingMode")
        if mode and body_mode and mode != body_mode:
            return self._refuse(
                account,
                "conflicting_trading_mode",
                f"the message says tradingMode {clip(repr(body_mode))} but its attribute says {clip(repr(mode))}",
            )
        if in_body is not None:
            resolved = self.resolve(in_body)
            if named and resolved != self.resolve(named):
                return self._refuse(
                    account,
                    "conflicting_account",
                    f"the message says account {clip(repr(in_body))} but its attribute says {clip(repr(named))}",
                )
            if not named:
                if resolved not in self.served:
                    return self._refuse(
                        account,
                        "missing_account",
                        f"the message names account {clip(repr(in_body))} only in its body: give it as the message "
                        "attribute 'account', which subscriptions route on; nothing was run",
                    )
                account = resolved
        elif not named and len(self.served) != 1:
            return self._refuse(
                account,
                "missing_account",
                f"this topic serves several accounts ({', '.join(sorted(self.known))}): address the message with "
                "the attribute 'account'; nothing was run",
            )
        problem = self._mode_problem(mode or body_mode, account)
        return Address(Route.SERVE, account, problem)

    def check_schedule(self, address: Address, job: str, accounts: list[str] | None) -> Address:
        """A job that lists its accounts (infra/schedules.yaml) runs for those alone: a message of it addressed
        elsewhere, or to no account, did not come from its scheduler jobs."""
        if not accounts or address.account in {self.resolve(a) for a in accounts}:
            return address
        return self._refuse(
            address.account,
            "schedule_mismatch",
            f"the job {job!r} runs for the accounts {', '.join(accounts)}, not for {address.account}; nothing was run",
        )

    def _mode_problem(self, mode: str | None, account: str | None) -> BadRequest | None:
        if mode and mode != self.trading_mode:
            return BadRequest(
                "wrong_trading_mode",
                f"the message asks for tradingMode {clip(repr(mode))}, but account {account} is served in "
                f"{self.trading_mode} mode; nothing was run",
            )
        return None

    @staticmethod
    def _refuse(account: str | None, code: str, message: str) -> Address:
        return Address(Route.SERVE, account, BadRequest(code, message))


def unknown_account(named: str, account: str | None) -> BadRequest:
    """The default deployment's answer to a name it cannot route: no account at all, or an alias of an account
    another deployment serves (only ids reach it: the sender must learn the id)."""
    if account is None:
        why = f"no deployment serves the account {clip(repr(named))}"
    else:
        why = (
            f"{clip(repr(named))} is an alias of {account}, which another deployment serves: address the message by "
            f"its id (the attribute account={account}), since subscriptions route on ids"
        )
    return BadRequest("unknown_account", f"{why}; nothing was run")


def resolve_name(name: str, known: Set[str], aliases: Mapping[str, str]) -> str | None:
    """The account id a name stands for (itself when it is an id, else an alias's account), or None."""
    if name in known:
        return name
    return aliases.get(name)


def named_account(accounts_file: str, name: str, strict: bool = True) -> str:
    """The account id an operator's NAME stands for (`consumer --account`), resolved as the consumer resolves an
    address. Without an accounts file, NAME itself. With one, a name it lists neither as an id nor as an alias is
    refused (strict), or returned as it is."""
    if not accounts_file:
        return name
    known, aliases = load_accounts_file(Path(accounts_file))
    account = resolve_name(name, known, aliases)
    if account is not None or not strict:
        return account or name
    listed = ", ".join(
        f"{a} ({', '.join(n for n, to in aliases.items() if to == a) or 'no alias'})" for a in sorted(known)
    )
    raise ConfigError(f"{name!r} is neither an account id nor an alias in ACCOUNTS_FILE {accounts_file}: {listed}")


def load_accounts_file(path: Path) -> tuple[set[str], dict[str, str]]:
    """The accounts file: every account of every deployment, with its aliases.

    accounts:
      DU1234567: {aliases: [paper]}
      U7654321: {aliases: [live, main]}
    """
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"ACCOUNTS_FILE {path}: {e}") from None
    entries = raw.get("accounts") if isinstance(raw, dict) else None
    if not isinstance(entries, dict) or not entries:
        raise ConfigError(f"ACCOUNTS_FILE {path}: expected a mapping 'accounts' of account ids")
    known: set[str] = set()
    aliases: dict[str, str] = {}
    for account, spec in entries.items():
        account = str(account)
        known.add(account)
        names = (spec or {}).get("aliases", []) if isinstance(spec, dict) else None
        if not isinstance(names, list):
            raise ConfigError(f"ACCOUNTS_FILE {path}: accounts.{account}.aliases must be a list")
        for alias in map(str, names):
            if alias in aliases and aliases[alias] != account:
                raise ConfigError(f"ACCOUNTS_FILE {path}: alias {alias!r} names two accounts")
            aliases[alias] = account
    clash = known & set(aliases)
    if clash:
        raise ConfigError(f"ACCOUNTS_FILE {path}: {', '.join(sorted(clash))} is both an account and an alias")
    return known, aliases


def live_account_refusal(trading_mode: str, configured: str, managed: list[str]) -> str | None:
    """Why a paper deployment may not trade the account it is pointed at, or None. The live guard keys on
    TRADING_MODE: a paper deployment pointed at a live login (TWS on its live port, a port mixed up) traded real
    money with no ALLOW_LIVE. IB's paper account ids start with D (DU..., DF...)."""
    traded = configured or (managed[0] if len(managed) == 1 else "")
    if trading_mode != "paper" or not traded or traded.startswith("D"):
        return None
    return (
        f"a paper deployment (TRADING_MODE=paper) refuses to trade {traded}, a live account id (paper account ids "
        "start with D); deploy it with TRADING_MODE=live and ALLOW_LIVE=yes to trade it"
    )
