"""The settlement recipe a decision hands to settlement (and an admission to the sweeper)."""

from __future__ import annotations

import pytest

from extproc.quota.recipe import SettleLimit, SettleRecipe

RECIPE = SettleRecipe("dec-1", 300, (
    (SettleLimit("xq:{acme}:t:pro", "acme", "gcra", True, "60000", "1000"),
     SettleLimit("xq:{acme}:b:pro", "acme", "budget", True, "20261123"),
     SettleLimit("xq:{acme}:c:pro", "acme", "concurrency", False)),
    (SettleLimit("xq:{global:all}:r:all", "global:all", "gcra", False, "1000", "50"),),
), prompt_tokens=12)


def test_round_trip() -> None:
    assert SettleRecipe.from_json(RECIPE.to_json()) == RECIPE


@pytest.mark.parametrize("text", ["", "{}", '{"l": "x", "e": 1, "g": []}', '{"l": "x", "e": 1, "g": [[]]}',
                                  '{"l": "x", "e": "many", "g": [[["k", "t", "gcra", 1, "", ""]]]}', "[1]"])
def test_anything_else_is_refused(text: str) -> None:
    with pytest.raises((ValueError, KeyError, TypeError)):
        SettleRecipe.from_json(text)
