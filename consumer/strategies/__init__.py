"""Strategies, found by name: every `Strategy` subclass with an `id` in a module of this package.

Adding a strategy is adding a module here; nothing else changes. Discovery runs when asked (no import-time
registry), and two strategies claiming one id is an error rather than a silent override.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

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
