"""Strategies, found by name: every `Strategy` subclass with an `id` in a module of this package.

Adding a strategy is adding a module here; nothing else changes. Discovery runs when asked (no import-time
registry), and two strategies claiming one id is an error rather than a silent override.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Mapping
from typing import Any

from consumer.errors import clip
from consumer.strategies.base import Strategy

_NOT_STRATEGIES = {"base", "indicators"}


def discover() -> dict[str, type[Strategy]]:
    found: dict[str, type[Strategy]] = {}
    for module_info in pkgutil.iter_modules(__path__):
        if module_info.name in _NOT_STRATEGIES or module_info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, Strategy) and cls.__module__ == module.__name__ and not inspect.isabstract(cls):
                if cls.id in found:
                    raise RuntimeError(f"two strategies claim the id {cls.id!r}: {found[cls.id]} and {cls}")
                found[cls.id] = cls
    return found


def naming_problems(
    names: list[str], strategy_params: Mapping[str, Any], known: Mapping[str, type[Strategy]]
) -> list[str]:
    """Strategies an allocation names that do not exist, and params given for strategies it does not run.

    Shared by the consumer's allocation and `consumer publish`, so the laptop refuses in the consumer's own words.
    """
    problems = []
    unknown = [n for n in names if n not in known]
    if unknown:
        problems.append(
            f"unknown strategy {clip(', '.join(map(repr, unknown)))}; known strategies: {', '.join(sorted(known))}"
        )
    stray = sorted(set(strategy_params) - set(names))
    if stray:
        problems.append(f"strategyParams given for {clip(', '.join(stray))}, which this allocation does not run")
    return problems


def param_problems(name: str, own: Any, strategy: type[Strategy]) -> list[str]:
    """What the strategy's params schema finds wrong in `own`, each as `strategyParams.<name>[path]: message`."""
    from jsonschema import Draft202012Validator

    errors = sorted(Draft202012Validator(strategy.params_schema).iter_errors(own), key=lambda e: list(e.path))
    problems = []
    for error in errors:
        where = "".join(f"[{p!r}]" if isinstance(p, str) else f"[{p}]" for p in error.absolute_path)
        problems.append(f"strategyParams.{name}{where}: {error.message}")
    return problems
