"""Strict reading of the YAML (and JSON) files a user writes: sweep files, run files.

The text must be UTF-8 (a bad byte is reported with its offset), and a mapping must not give a key twice
(PyYAML keeps the last value silently; here the file is refused with the line of the second one). Plain
data only: the loader is yaml.SafeLoader's.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from clreg.core.extras import need


class YamlFileError(ValueError):
    """A user's YAML file that cannot be read; the message names the file and the problem."""


@lru_cache(maxsize=None)
def unique_key_loader(purpose: str = "reading a YAML file"):
    """yaml.SafeLoader subclass that refuses a mapping giving one key twice (PyYAML imported at first use)."""
    yaml = need("yaml", purpose)

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):  # noqa: D102
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    if key in seen:
                        raise yaml.constructor.ConstructorError(
                            None, None, f"duplicate key {key!r} (first on line {seen[key]}, again on line {line})",
                            key_node.start_mark)
                    seen[key] = line
                except TypeError:  # an unhashable key: SafeLoader's own error follows
                    continue
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader


def read_text(path: str | Path, what: str = "file") -> str:
    """The file's text, decoded as UTF-8; YamlFileError naming the file if it is missing, unreadable or not
    UTF-8 (with the offset of the first bad byte)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise YamlFileError(f"cannot read {what} {str(path)!r}: it does not exist") from None
    except OSError as err:
        raise YamlFileError(f"cannot read {what} {str(path)!r}: {err.strerror or err}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise YamlFileError(f"{what} {str(path)!r} is not UTF-8 text: byte 0x{data[err.start]:02x} at offset "
                            f"{err.start} cannot be decoded") from None


def load_yaml(path: str | Path, what: str = "file", purpose: str = "reading a YAML file") -> Any:
    """The YAML document in `path` as plain data, read strictly (UTF-8, no duplicate keys); YamlFileError
    naming the file, the problem and its line otherwise. `purpose` names the use in the message shown
    when PyYAML is not installed."""
    loader = unique_key_loader(purpose)
    text = read_text(path, what)
    yaml = need("yaml", purpose)
    try:
        return yaml.load(text, Loader=loader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise YamlFileError(f"{what} {str(path)!r} is not valid YAML{where}: {problem}") from None
