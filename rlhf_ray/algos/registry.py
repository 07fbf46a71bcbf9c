"""Name -> function registries, so configs can pick an algorithm by string.

A new loss or estimator is one decorated function; the controller looks it up
with ``REGISTRY.get(name)`` and a typo fails loudly with the valid choices.
"""
from __future__ import annotations

from typing import Callable, Dict, List, TypeVar

F = TypeVar("F", bound=Callable)


class Registry:
    """A named mapping from strings to callables of one kind."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: Dict[str, Callable] = {}

    def register(self, name: str) -> Callable[[F], F]:
        """Decorator: ``@REG.register("name")`` adds the function under ``name``."""

        def deco(fn: F) -> F:
            if name in self._entries and self._entries[name] is not fn:
                # Silent overwrite would make the active algorithm depend on import order.
                raise ValueError(f"{self.kind} '{name}' is already registered")
            self._entries[name] = fn
            return fn

        return deco

    def get(self, name: str) -> Callable:
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(
                f"unknown {self.kind} '{name}'; choose one of: {', '.join(self.names())}"
            ) from None

    def names(self) -> List[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


KL_ESTIMATORS = Registry("kl estimator")
ADVANTAGE_ESTIMATORS = Registry("advantage estimator")
POLICY_LOSSES = Registry("policy loss")
VALUE_LOSSES = Registry("value loss")
PREFERENCE_LOSSES = Registry("preference loss")
