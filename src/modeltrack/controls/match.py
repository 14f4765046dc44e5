"""Which requests a budget, a route or a cache rule applies to: equality or a glob on attribution dimensions.

A scope is compiled once (exact values as a tuple compare, globs as one regular expression each), so a request
is tested against every rule in a few hundred nanoseconds: controls that match nothing must cost nothing.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

DIMENSIONS: Final[tuple[str, ...]] = ("team", "app", "feature", "user", "provider", "model", "org", "key_id")
"""``org`` and ``key_id`` are only ever set by a ModelTrack key (never by a header): multi-tenant budgets scope
on the org, a key's own budget on its id."""
_GLOB: Final = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class Scope:
    """``{team: search, model: "gpt-4o*"}``: every named dimension must match (missing values match ``""``)."""

    exact: tuple[tuple[str, str], ...] = ()
    globs: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, values: Mapping[str, str]) -> Scope:
        exact = tuple((k, v) for k, v in values.items() if not _GLOB.search(v))
        globs = tuple((k, v) for k, v in values.items() if _GLOB.search(v))
        return cls(exact, globs)

    @property
    def is_global(self) -> bool:
        return not self.exact and not self.globs

    def matches(self, values: Mapping[str, Any]) -> bool:
        for k, want in self.exact:
            if (values.get(k) or "") != want:
                return False
        for k, pattern in self.globs:
            if not _compiled(pattern).match(values.get(k) or ""):
                return False
        return True

    def describe(self) -> str:
        parts = [f"{k}={v}" for k, v in (*self.exact, *self.globs)]
        return ", ".join(parts) or "everything"


_CACHE: Final[dict[str, re.Pattern[str]]] = {}


def _compiled(pattern: str) -> re.Pattern[str]:
    rx = _CACHE.get(pattern)
    if rx is None:
        rx = _CACHE[pattern] = re.compile(fnmatch.translate(pattern))
    return rx
