"""Declared settings. Each part of clreg that a run configures (the run itself, the optimiser and its
schedule, each importance measure) lists its settings once, as `Option`s. Everything else is derived
from those declarations: the run config's fields and value checks (`clreg.train.config`), the command-line
flags (`clreg.cli.commands`), the normalisation of run keys, and the option list of `clreg methods`."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Option:
    """One setting: its name in run files, sweep files and the store, how to read and check a value, its
    default and help, and the keyword argument of the part that takes it."""

    name: str
    type: Callable[[Any], Any]  # int, float, bool, str, or a parser raising ValueError
    default: Any
    help: str
    flag: str | None = None  # command-line flag; default --name with - for _
    choices: tuple | None = None
    minimum: float | None = None
    above: bool = False  # the minimum is exclusive
    maximum: float | None = None
    check: Callable[[Any], None] | None = None  # further check, raising ValueError("must be ...")
    argument: str | None = None  # keyword of the measure/optimiser that takes it; default name
    in_key: bool = True  # part of a run's identity (False: where data is read, which device)
    key_when_default: bool = True  # False for settings added after runs were stored: keyed only when set
    default_text: str | None = None  # the [default: ...] shown when the default is resolved elsewhere

    @property
    def cli_flag(self) -> str:
        """The command-line flag, e.g. --batch-size."""
        return self.flag or "--" + self.name.replace("_", "-")

    @property
    def keyword(self) -> str:
        """The keyword argument of the part that takes this setting."""
        return self.argument or self.name

    @property
    def shown_default(self) -> str:
        """The default as shown in help texts and `clreg methods`."""
        if self.default_text is not None:
            return self.default_text
        if self.type is bool:
            return "on" if self.default else "off"
        return str(self.default)

    def parse(self, value: Any) -> Any:
        """`value` (from the command line, YAML or JSON) as this setting's type, checked; ValueError
        ("must be ...") otherwise. None stands for the default where the default is None."""
        if value is None:
            if self.default is None:
                return None
            raise ValueError(f"must be set (default {self.shown_default}), got None")
        value = _convert(self.type, value)
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"must be one of {', '.join(map(str, self.choices))}, got {value!r}")
        for number in _numbers(value):  # a number, or each number of a list (a word such as 'auto' has none)
            self.check_range(number)
        if self.check is not None:
            self.check(value)
        return value

    def check_range(self, number: float) -> None:
        """ValueError ("must be ...") if `number` is outside the declared range [minimum, maximum]."""
        low_ok = self.minimum is None or (number > self.minimum if self.above else number >= self.minimum)
        if not low_ok or (self.maximum is not None and number > self.maximum):
            raise ValueError(f"must be {self.range_text}, got {number}")

    @property
    def range_text(self) -> str:
        """The declared range in words, e.g. "> 0", ">= 1", "in (0, 1]"."""
        return _range_text(self.minimum, self.maximum, self.above)

    def key_value(self, value: Any) -> Any:
        """The value as it enters a run key: numbers normalised (1 and 1.0 alike)."""
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        return value


def _range_text(minimum: float | None, maximum: float | None, above: bool = False) -> str:
    """A range in words: "> 0", ">= 1", "<= 100", "in (0, 1]", or "a finite number" without bounds."""
    low = None if minimum is None else f"{'>' if above else '>='} {_text(minimum)}"
    if maximum is None:
        return low or "a finite number"
    if low is None:
        return f"<= {_text(maximum)}"
    return f"in {'(' if above else '['}{_text(minimum)}, {_text(maximum)}]"


def _text(number: float) -> str:
    """A bound as written in messages: 0, 1, 0.5, 9223372036854775807."""
    return str(number) if isinstance(number, int) else f"{number:g}"


def _numbers(value: Any) -> list:
    """The numbers in a parsed value: itself if a number, the items of a list of numbers, else none."""
    items = value if isinstance(value, (list, tuple)) else [value]
    return [v for v in items if isinstance(v, (int, float)) and not isinstance(v, bool)]


def _convert(kind: Callable[[Any], Any], value: Any) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "on", "off", "yes", "no", "1", "0"):
            return value.lower() in ("true", "on", "yes", "1")
        raise ValueError(f"must be true or false, got {value!r}")
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)) or \
                (isinstance(value, str) and not value.strip().lstrip("+-").isdigit()):
            raise ValueError(f"must be an integer, got {value!r}")
        return int(value)
    if kind is float:
        if isinstance(value, bool):
            raise ValueError(f"must be a number, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError, OverflowError):
            raise ValueError(f"must be a number, got {value!r}") from None
        if not math.isfinite(number):
            raise ValueError(f"must be a finite number, got {value!r}")
        return number
    if kind is str:
        if not isinstance(value, str):
            raise ValueError(f"must be text, got {value!r}")
        return value
    return kind(value)


def finite_number(value: Any, low: float | None = None, high: float | None = None) -> float:
    """`value` as a float if it is a finite number (int or float, not bool, not text) in [low, high];
    ValueError ("must be ...") otherwise. For values read from files (sweep files, stored results), where
    text that looks like a number is a mistake rather than a command-line flag."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"must be a finite number, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"must be {_range_text(low, high)}, got {value!r}")
    return float(value)


MAX_THREADS = 4 * (os.cpu_count() or 1)  # more threads than this only slow a run down (and torch may crash)


def check_threads(count: int) -> None:
    """ValueError unless `count` threads is at most MAX_THREADS (4 per core of this machine)."""
    if count > MAX_THREADS:
        raise ValueError(f"must be at most {MAX_THREADS} (4 per core; this machine has {os.cpu_count()} cores), "
                         f"got {count}")


class SettingError(ValueError):
    """A bad value or combination of named settings. The message is a template whose {0}, {1}, ... are the
    settings: str() names their keywords (lr_min_factor), `cli_message()` their flags (--lr-min-factor)."""

    def __init__(self, template: str, *options: "Option | str"):
        self.template = template
        self.options = [option if isinstance(option, Option) else Option(option, str, None, "") for option in options]
        super().__init__(template.format(*(option.name for option in self.options)))

    def cli_message(self) -> str:
        """The message naming the settings' command-line flags."""
        return self.template.format(*(option.cli_flag for option in self.options))


def number_or(word: str) -> Callable[[Any], float | str]:
    """A parser for a number or one keyword (SOS's alpha: a number or 'auto')."""
    def parse(value: Any) -> float | str:
        if value == word:
            return word
        try:
            return _convert(float, value)
        except ValueError as err:
            number = "a finite number" if "finite" in str(err) else "a number"
            raise ValueError(f"must be {number} or {word!r}, got {value!r}") from None
    parse.__name__ = f"number_or_{word}"
    return parse


def positive_ints(example: str) -> Callable[[Any], list[int]]:
    """A parser for a list of integers >= 1, given as a list or as text separated by commas (`example`)."""
    return _positive_list(int, "integers", example)


def positive_floats(example: str) -> Callable[[Any], list[float]]:
    """A parser for a list of numbers > 0, given as a list or as text separated by commas (`example`)."""
    return _positive_list(float, "numbers", example)


def _positive_list(kind: type, words: str, example: str) -> Callable[[Any], list]:
    def parse(value: Any) -> list:
        items = value.split(",") if isinstance(value, str) else value
        try:
            numbers = [_convert(kind, v.strip() if isinstance(v, str) else v) for v in items
                       if not (kind is int and isinstance(v, float))]
        except (TypeError, ValueError):
            numbers = []
        if not isinstance(items, (list, tuple)) or not numbers or len(numbers) != len(items) or min(numbers) <= 0:
            raise ValueError(f"must be positive {words} separated by commas (e.g. {example}), got {value!r}")
        return numbers
    parse.__name__ = f"positive_{kind.__name__}s"
    return parse


def merge(*groups: tuple[Option, ...]) -> tuple[Option, ...]:
    """Options of several parts, each name once; a name declared twice must be the same declaration."""
    seen: dict[str, Option] = {}
    for group in groups:
        for option in group:
            if option.name in seen and seen[option.name] != option:
                raise ValueError(f"setting {option.name!r} is declared twice, differently")
            seen.setdefault(option.name, option)
    return tuple(seen.values())
