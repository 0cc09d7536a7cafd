"""Reading a YAML file people wrote (rule packs, fleet manifests, scenarios): every way it can fail
is one line, for the caller to prefix with the file and raise as its own error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

# libyaml's loader when PyYAML was built with it: about 5x faster (10,000 sensors: 2.5 s, not 13 s).
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# The pure-Python loader, for small files: its messages say more ("expected the node content in a
# flow node", where libyaml's say "did not find expected node content").
SMALL_FILE_LOADER = yaml.SafeLoader

# What PyYAML's safe loader raises besides YAMLError on some texts: RecursionError on deep nesting
# (its composer and constructor recurse once per level), ValueError on `2024-13-01` or `!!int x`,
# AttributeError and IndexError on a bare `!!timestamp` or `!!int` (found by fuzzing the loader).
_LOADER_FAILURES = (RecursionError, ValueError, TypeError, LookupError, AttributeError, ArithmeticError)


_TOO_DEEP = "not valid YAML: nested too deeply to load"


class YamlFileError(Exception):
    """A YAML file that cannot be read or loaded; the message is one line, without the path."""


def read_yaml(path: Path | str, *, loader: type[Any] = YAML_LOADER) -> Any:
    """The document in a YAML file (a safe loader); YamlFileError says in one line what is wrong."""
    return load_yaml(read_text(path), loader=loader)


def read_text(path: Path | str) -> str:
    """A YAML file's text; YamlFileError says in one line why it cannot be read."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise YamlFileError("file not found") from None
    except UnicodeDecodeError as exc:
        raise YamlFileError(f"not UTF-8 text: {exc}") from None
    except OSError as exc:  # a directory, no permission
        raise YamlFileError(f"cannot be read: {exc.strerror or exc}") from None


def load_yaml(text: str, *, loader: type[Any] = YAML_LOADER) -> Any:
    """The document in YAML `text` (a safe loader); YamlFileError says in one line what is wrong."""
    try:
        return yaml.load(text, Loader=loader)  # noqa: S506 - safe loaders only
    except yaml.YAMLError as exc:
        if "maximum nesting depth" in str(exc):  # libyaml's own bound, where Python's recursion ends
            raise YamlFileError(_TOO_DEEP) from None
        raise YamlFileError(f"not valid YAML: {_yaml_problem(exc)}") from None
    except RecursionError:
        raise YamlFileError(_TOO_DEEP) from None
    except _LOADER_FAILURES as exc:
        problem = " ".join(str(exc).split())
        raise YamlFileError(f"not valid YAML: {type(exc).__name__}: {problem}") from None


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's several-line message as one line: `line 3, column 7: problem (context)`."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        context = f" ({exc.context})" if exc.context else ""
        return f"line {mark.line + 1}, column {mark.column + 1}: {exc.problem}{context}"
    if isinstance(exc, yaml.reader.ReaderError):  # its second line names "<unicode string>", not the file
        return f"{str(exc).splitlines()[0]} (at character offset {exc.position})"
    return " ".join(str(exc).split())
