"""Settings tables: typed reading of one parsed TOML table, field by field.

Every configuration reader in the supervisor (the config file, its restart
and sandbox sections, validation policies) goes through `Table`, so every
error has one format: the field's full dotted path, a colon, and what is
wrong with it, e.g. `sandbox.cpu_cores: expected a number >= 0, got -1`.
A table remembers the keys it was asked for, and `finish()` reports the
others as unknown: a misspelt key fails loudly instead of silently leaving
the default in force.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Collection, Iterator
from typing import Any, TypeVar

from caxton.contract import parse_size

D = TypeVar("D")

# Keys that TOML writes without quotes; others are quoted in a dotted path
# so that the path can be pasted back into the file.
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


class ConfigError(ValueError):
    """A configuration value is wrong.

    `field` is its dotted path ("" when the problem is not one field's) and
    `problem` what is wrong, so callers with their own error types can carry
    both over.
    """

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}" if field else problem)
        self.field = field
        self.problem = problem


def _dotted(path: str, key: str) -> str:
    """`key` below `path`, as TOML would write it: `policies."my policy"`."""
    if not _BARE_KEY.fullmatch(key):
        # JSON string syntax is TOML's basic string syntax for any key.
        key = json.dumps(key)
    return f"{path}.{key}" if path else key


class Table:
    """One TOML table and the dotted path it was found at ("" for a document).

    Each reader takes the key and the value to use when the key is absent
    (defaults come from code and are not checked), and raises ConfigError
    naming the field when the value is wrong.
    """

    def __init__(self, data: object, path: str = "") -> None:
        # Any TOML value may stand where a table is expected.
        if not isinstance(data, dict):
            raise ConfigError(path, f"expected a table, got {data!r}")
        self.path = path
        self._data: dict[str, Any] = data
        self._read: set[str] = set()

    def __contains__(self, key: str) -> bool:
        return key in self._data

    def __iter__(self) -> Iterator[str]:
        """Every key, for tables keyed by name (like [policies.<name>])."""
        return iter(self._data)

    def error(self, key: str, problem: str) -> ConfigError:
        """An error about `key`, for checks beyond a single reader's."""
        return ConfigError(_dotted(self.path, key), problem)

    def _get(self, key: str) -> Any:
        self._read.add(key)
        return self._data[key]

    def integer(self, key: str, default: D, *, minimum: int | None = None) -> int | D:
        if key not in self._data:
            return default
        value = self._get(key)
        # bool is an int subclass, but `queue_limit = true` is a mistake.
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"expected an integer, got {value!r}")
        if minimum is not None and value < minimum:
            raise self.error(key, f"expected an integer >= {minimum}, got {value!r}")
        return value

    def number(
        self, key: str, default: D, *, minimum: float | None = None, above: float | None = None
    ) -> float | D:
        """A finite number as a float; TOML's `60` is as good as `60.0`."""
        if key not in self._data:
            return default
        value = self._get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(key, f"expected a number, got {value!r}")
        # TOML can spell nan and inf; neither is a meaningful setting, and
        # NaN would slip through every range comparison below.
        if not math.isfinite(value):
            raise self.error(key, f"expected a finite number, got {value!r}")
        if minimum is not None and value < minimum:
            raise self.error(key, f"expected a number >= {minimum:g}, got {value!r}")
        if above is not None and value <= above:
            raise self.error(key, f"expected a number > {above:g}, got {value!r}")
        return float(value)

    def numbers(self, key: str, default: D) -> tuple[float, ...] | D:
        """A non-empty list of finite numbers, as floats."""
        if key not in self._data:
            return default
        value = self._get(key)
        if (not isinstance(value, list) or not value
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                           for v in value)):
            raise self.error(key, f"expected a non-empty list of numbers, got {value!r}")
        return tuple(float(v) for v in value)

    def size(self, key: str, default: D, *, minimum: int = 0) -> int | D:
        """A byte count: an integer or a string such as "64MiB" or "10MB"."""
        if key not in self._data:
            return default
        value = self._get(key)
        try:
            size = parse_size(value)
        except ValueError as exc:
            raise self.error(key, str(exc)) from None
        if size < minimum:
            raise self.error(key, f"expected a size >= {minimum}, got {value!r}")
        return size

    def string(self, key: str, default: D) -> str | D:
        if key not in self._data:
            return default
        value = self._get(key)
        if not isinstance(value, str):
            raise self.error(key, f"expected a string, got {value!r}")
        return value

    def choice(self, key: str, default: D, options: Collection[str]) -> str | D:
        if key not in self._data:
            return default
        value = self._get(key)
        if not isinstance(value, str) or value not in options:
            raise self.error(key, f"expected one of {', '.join(map(repr, options))}, got {value!r}")
        return value

    def flag(self, key: str, default: D) -> bool | D:
        if key not in self._data:
            return default
        value = self._get(key)
        if not isinstance(value, bool):
            raise self.error(key, f"expected true or false, got {value!r}")
        return value

    def strings(self, key: str, default: D, *, options: Collection[str] | None = None) -> list[str] | D:
        """A list of strings, each one of `options` when those are given."""
        if key not in self._data:
            return default
        value = self._get(key)
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise self.error(key, f"expected a list of strings, got {value!r}")
        if options is not None:
            unknown = sorted(set(value) - set(options))
            if unknown:
                known = ", ".join(sorted(options))
                raise self.error(key, f"unknown {', '.join(map(repr, unknown))}; expected some of {known}")
        return value

    def table(self, key: str) -> Table:
        """The sub-table at `key`; an absent one reads as empty."""
        self._read.add(key)
        return Table(self._data.get(key, {}), _dotted(self.path, key))

    def tables(self, key: str) -> list[Table]:
        """An array of tables (`[[auth.tokens]]`), each at `key[i]`; absent reads as none."""
        value = self._get(key) if key in self._data else []
        if not isinstance(value, list):
            raise self.error(key, f"expected an array of tables ([[{_dotted(self.path, key)}]]), got {value!r}")
        return [Table(item, f"{_dotted(self.path, key)}[{i}]") for i, item in enumerate(value)]

    def finish(self) -> None:
        """Reject every key no reader asked for, naming them all."""
        unknown = sorted(set(self._data) - self._read)
        if unknown:
            plural = "s" if len(unknown) > 1 else ""
            raise ConfigError(", ".join(_dotted(self.path, key) for key in unknown), f"unknown setting{plural}")
