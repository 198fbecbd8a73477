"""A settlement recipe: what settling one admission takes, as plain values (pure).

A request's end reaches settlement in Envoy's access log, possibly in another worker process
than the one that admitted it (envoy/README.md "Usage accounting"); the decision hands the
recipe over in Envoy dynamic metadata. The sweeper holds one too, for admissions whose end
never arrives. Whichever settles first wins (the settle script marks the decision settled),
so nothing is settled twice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SettleLimit:
    key: str
    tag: str
    kind: str  # gcra | budget | concurrency
    counts_tokens: bool
    a: str = ""  # gcra: period ms; budget: the period the admission charged
    b: str = ""  # gcra: limit


@dataclass(frozen=True, slots=True)
class SettleRecipe:
    lease_id: str
    estimate_tokens: int
    #: Limits by hash tag: each group is one script call on one cluster slot.
    groups: tuple[tuple[SettleLimit, ...], ...]
    #: The prompt part of the estimate (a stream that ends without usage is charged this
    #: plus what it was seen to generate).
    prompt_tokens: int = 0

    @property
    def counts_tokens(self) -> bool:
        """A token rate or token budget is settled by this recipe (the usage moves it)."""
        return any(limit.counts_tokens for group in self.groups for limit in group)

    def to_json(self) -> str:
        return json.dumps({"l": self.lease_id, "e": self.estimate_tokens, "p": self.prompt_tokens,
                           "g": [[[x.key, x.tag, x.kind, int(x.counts_tokens), x.a, x.b] for x in g]
                                 for g in self.groups]}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> SettleRecipe:
        """Raises ValueError (or KeyError/TypeError) on anything that is not a recipe."""
        doc = json.loads(text)
        groups = tuple(tuple(SettleLimit(str(k), str(t), str(kind), bool(c), str(a), str(b))
                             for k, t, kind, c, a, b in group) for group in doc["g"])
        if not groups or not all(groups):
            raise ValueError("a recipe names at least one limit per group")
        return cls(str(doc["l"]), int(doc["e"]), groups, int(doc.get("p", 0)))
