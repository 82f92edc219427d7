"""The test-facing API of GatewayServer, declared once: a decorator on each method says what it is.

`@fault(...)` marks a method that changes the gateway behind the clients' backs (drops, refusals, errors, prices,
positions, the clock); `@query` marks a read-only inspection. From these marks, and nothing else:

- `ThreadedGateway` gets a thread-safe twin of every marked method (ibsim/threaded.py);
- scenario files may schedule the faults declared with `scheduled=True` or `aliases` (ibsim/scenario.py checks
  their arguments against the method's signature, and the schema's list of actions is filled from them);
- the scheduled-fault runner finds the method an action calls (GatewayServer.run_scheduled);
- tests/ibsim/test_controls.py checks that docs/ibsim.md lists exactly these faults, queries and actions.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

F = TypeVar("F", bound=Callable[..., Any])
MARK = "__ibsim_control__"


@dataclass(frozen=True)
class Control:
    """How a gateway method is exposed to tests and scenarios: a fault (changes state; `actions` are the scenario
    actions it backs, with the arguments each fixes) or a query (read-only). Set by the `fault` and `query` marks.
    """

    kind: Literal["fault", "query"]
    # scenario action -> the arguments it fixes (freeze: {"on": True}); empty: not schedulable
    actions: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


def fault(*, scheduled: bool = False, aliases: Mapping[str, Mapping[str, Any]] | None = None) -> Callable[[F], F]:
    """Marks a fault or control; `scheduled` makes it a scenario action under its own name, `aliases` under others
    with some arguments fixed (`freeze` and `unfreeze` are `freeze(on=True)` and `freeze(on=False)`)."""

    def mark(fn: F) -> F:
        actions: dict[str, Mapping[str, Any]] = dict(aliases or {})
        if scheduled:
            actions[fn.__name__] = {}
        setattr(fn, MARK, Control("fault", actions))
        return fn

    return mark


def query(fn: F) -> F:
    """Marks a read-only inspection method (it returns plain data copies)."""
    setattr(fn, MARK, Control("query"))
    return fn


def controls(cls: type) -> dict[str, Control]:
    """Every marked method of a class (its bases included), by name."""
    out: dict[str, Control] = {}
    for name in dir(cls):
        control = getattr(getattr(cls, name, None), MARK, None)
        if isinstance(control, Control):
            out[name] = control
    return out


@dataclass(frozen=True)
class Param:
    """One argument of a scheduled fault: its name, the types a scenario may give and whether it is required."""

    name: str
    accepts: tuple[type, ...]
    required: bool


@dataclass(frozen=True)
class Action:
    """A fault a scenario can schedule: the method it calls, the arguments it fixes, those the scenario gives."""

    name: str
    method: str
    fixed: Mapping[str, Any]
    params: tuple[Param, ...]

    def describe(self) -> str:
        """As docs/ibsim.md lists it: `send_error {code, message?, req_id?}`."""
        if not self.params:
            return self.name
        return f"{self.name} {{{', '.join(p.name + ('' if p.required else '?') for p in self.params)}}}"


# What a scenario value may be for an annotated parameter: a float argument takes integers too (YAML's `5`).
_ACCEPTS: dict[type, tuple[type, ...]] = {float: (int, float), int: (int,), str: (str,), bool: (bool,)}


def _accepts(annotation: Any, where: str) -> tuple[type, ...]:
    if get_origin(annotation) in (Union, types.UnionType):
        out: tuple[type, ...] = ()
        for arg in get_args(annotation):
            if arg is not type(None):
                out += _accepts(arg, where)
        return out
    if annotation not in _ACCEPTS:
        raise TypeError(f"{where}: a scheduled fault takes int, float, str or bool, not {annotation!r}")
    return _ACCEPTS[annotation]


def actions(cls: type) -> dict[str, Action]:
    """The scenario actions of a class, their parameters read from the signatures of the methods they call."""
    out: dict[str, Action] = {}
    for method, control in controls(cls).items():
        if not control.actions:
            continue
        signature = inspect.signature(getattr(cls, method), eval_str=True)
        for name, fixed in control.actions.items():
            params = tuple(
                Param(p.name, _accepts(p.annotation, f"{method}({p.name})"), p.default is inspect.Parameter.empty)
                for p in signature.parameters.values()
                if p.name != "self" and p.name not in fixed
            )
            out[name] = Action(name, method, dict(fixed), params)
    return out
