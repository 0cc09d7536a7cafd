"""Errors of the rules package; all are `pantau.errors.PantauError`s.

PantauError
 └── RuleError               anything the rules package raises on purpose
      └── RuleFileError      a rule file cannot be loaded; names the file, the rule and the field

(A sensor lacking metadata an index needs is the kernel's pantau.errors.SensorMetadataError.)
"""

from __future__ import annotations

from pantau.errors import PantauError


class RuleError(PantauError):
    """Base of the rules package's errors."""


class RuleFileError(RuleError):
    """A rule file is invalid: `path: rule 'id' (rules[i]): field 'f': problem`."""

    def __init__(self, message: str, *, path: str, rule: str | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.rule = rule
        self.field = field
