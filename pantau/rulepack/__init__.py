"""Rule packs, the contract between the rule engine and the people who tune it: the rule model
(`model`), the YAML file format and its checks, each error naming the file, rule and field
(`config`), durations as rule files write them (`durations`), and which pack is in force.

The rules service evaluates a pack; the API shows the pack in force and checks a candidate one
(`POST /api/v1/rules/check`) with the same parser, so an engineer hears of a mistake before a
deploy. The default pack ships as deploy/rules.yaml.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from pantau.settings import SHIPPED_DIR, Settings

DEFAULT_RULES_FILE = SHIPPED_DIR / "rules.yaml"


def rule_pack_path(settings: Settings, override: str | None = None) -> Path:
    """The rule pack to load: `override` (a command-line --file), `[rules] file`, or the default pack."""
    return Path(override or settings.rules.file or DEFAULT_RULES_FILE)


def pack_digest(text: str) -> str:
    """A rule pack's fingerprint: the first 16 hex digits of its text's SHA-256."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]
