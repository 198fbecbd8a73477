"""Walking parsed YAML with typed accessors that collect errors with their field paths."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(Exception):
    """A config file that cannot be used; ``errors`` lists every problem found."""

    def __init__(self, source: str, errors: list[str]) -> None:
        self.source = source
        self.errors = errors
        super().__init__("\n".join(f"{source}: {e}" for e in errors))


class Reader:
    """Walks the parsed YAML, collecting errors with their field paths."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def error(self, where: str, msg: str) -> None:
        self.errors.append(f"{where}: {msg}" if where else msg)

    def mapping(self, value: Any, where: str, allowed: set[str]) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.error(where, f"expected a mapping, got {type(value).__name__}")
            return {}
        for key in value:
            if key not in allowed:
                hint = f" (known: {', '.join(sorted(allowed))})"
                self.error(f"{where}.{key}" if where else str(key), f"unknown field{hint}")
        return value

    def free_mapping(self, value: Any, where: str) -> dict[str, Any]:
        """A mapping whose keys are names the user chooses (listeners, header names)."""
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.error(where, f"expected a mapping, got {type(value).__name__}")
            return {}
        out = {}
        for key, item in value.items():
            if not isinstance(key, str) or not key:
                self.error(where, f"keys must be non-empty strings, got {key!r}")
            else:
                out[key] = item
        return out

    def strings(self, value: Any, where: str, unique: bool = False) -> tuple[str, ...]:
        """A list of non-empty strings."""
        out: list[str] = []
        for i, item in enumerate(self.seq(value, where)):
            if not isinstance(item, str) or not item:
                self.error(f"{where}[{i}]", f"expected a non-empty string, got {item!r}")
            elif unique and item in out:
                self.error(f"{where}[{i}]", f"{item!r} is listed twice")
            else:
                out.append(item)
        return tuple(out)

    def seq(self, value: Any, where: str) -> list[Any]:
        if value is None:
            return []
        if not isinstance(value, list):
            self.error(where, f"expected a list, got {type(value).__name__}")
            return []
        return value

    def typed(self, value: Any, where: str, kind: type[T], default: T) -> T:
        if value is None:
            return default
        if kind is int and isinstance(value, bool):
            self.error(where, "expected an integer")
            return default
        if not isinstance(value, kind):
            self.error(where, f"expected {kind.__name__}, got {type(value).__name__}")
            return default
        return value

    def choice(self, value: Any, where: str, parse: Callable[[str], T], options: str) -> T | None:
        try:
            return parse(value)
        except (ValueError, TypeError):
            self.error(where, f"{value!r} is not one of: {options}")
            return None
