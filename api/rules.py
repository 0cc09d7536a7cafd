"""Rules: the pack in force (what each rule worker loaded: its digest, its rules, which sensors each
selects) and a check of a candidate pack with the parser the engine loads with, answering every
mistake with the rule and field it is in, before anything is deployed."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from api.access import principal
from api.common import answer
from api.keys import SETTINGS, STORE
from api.openapi import API, ENGINEER, Param
from api.problems import Problem, bad_param
from pantau.domain import Sensor
from pantau.errors import RuleFileError
from pantau.rulepack import pack_digest, rule_pack_path
from pantau.rulepack.config import load_rules, rules_from_text
from pantau.rulepack.model import CompositeRule, Rule, RuleSet

WORKER = Param("worker", {"type": "string", "default": "default"}, "the rule worker's name ([rules] worker)")
CANDIDATE = {
    "type": "object",
    "properties": {"yaml": {"type": "string"}},
    "required": ["yaml"],
    "additionalProperties": False,
}
CHECK_ANSWERS = {
    200: "The pack is valid",
    413: "Larger than a rule pack can be",
    422: "The pack has a mistake: each error names the rule and field",
}
# A candidate pack is a file people write: far below this. Larger is refused before parsing.
MAX_PACK_BYTES = 1_000_000


def _selected(rule: Rule, sensors: list[Sensor]) -> list[str]:
    if isinstance(rule, CompositeRule):
        return sorted({s.id for c in rule.conditions for s in sensors if c.select.matches(s)})
    return [s.id for s in sensors if rule.select.matches(s)]


def _rule_json(rule: Rule, sensors: list[Sensor]) -> dict[str, Any]:
    severity = getattr(rule, "severity", None)
    return {"id": rule.id, "kind": rule.kind.value, "description": rule.description, "enabled": rule.enabled,
            "severity": None if severity is None else str(severity), "sensors": _selected(rule, sensors)}  # fmt: skip


def _pack_json(pack: RuleSet, sensors: list[Sensor]) -> list[dict[str, Any]]:
    return [_rule_json(rule, sensors) for rule in pack]


@API.get(
    "/api/v1/rules",
    summary="The rule pack in force: its digest, its rules and which sensors each selects",
    tag="rules",
    params=[WORKER],
)
async def get_rules(request: web.Request) -> web.Response:
    worker = WORKER.read(request)
    store = request.app[STORE]
    async with store.connection() as conn:
        cur = await conn.execute(
            "SELECT digest, source, content, loaded_at FROM rule_packs WHERE worker = %s", (worker,)
        )
        row = await cur.fetchone()
    who = principal(request)
    sensors = [s for s in await store.sensors() if who.sees(s.city)]  # a scoped caller: their cities' only
    if row is None:  # no worker of that name has run: the pack it would load
        path = rule_pack_path(request.app[SETTINGS])
        try:
            pack = load_rules(path)
        except RuleFileError as exc:
            raise Problem(409, "No pack in force", f"no rule worker {worker!r} has run, and {exc}") from None
        return answer(request, {"worker": worker, "in_force": False, "source": str(path),
                                "digest": pack_digest(pack.text), "loaded_at": None,
                                "rules": _pack_json(pack, sensors)})  # fmt: skip
    digest, source, content, loaded_at = row
    pack = rules_from_text(content, source=source)
    return answer(request, {"worker": worker, "in_force": True, "source": source, "digest": digest,
                            "loaded_at": loaded_at, "rules": _pack_json(pack, sensors)})  # fmt: skip


@API.post(
    "/api/v1/rules/check",
    summary="Check a candidate rule pack (its YAML, or {\"yaml\": ...}): errors name the rule and field",
    tag="rules",
    roles=ENGINEER,
    body=CANDIDATE,
    responses=CHECK_ANSWERS,
)
async def check_rules(request: web.Request) -> web.Response:
    if request.content_length is not None and request.content_length > MAX_PACK_BYTES:
        raise Problem(413, "Pack too large", f"at most {MAX_PACK_BYTES:,} bytes", param="body")
    raw = await request.read()
    if len(raw) > MAX_PACK_BYTES:
        raise Problem(413, "Pack too large", f"at most {MAX_PACK_BYTES:,} bytes", param="body")
    if request.content_type == "application/json":
        text = _yaml_field(raw)
    else:  # the YAML itself (application/yaml, text/plain, curl's --data-binary)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise bad_param("body", "UTF-8 text") from None
    if not text.strip():
        raise bad_param("body", "a rule pack's YAML (a mapping with a 'rules' list)")
    try:
        pack = rules_from_text(text, source="candidate")
    except RuleFileError as exc:  # a problem document whose `errors` name the rule and field
        error = {"rule": exc.rule, "field": exc.field, "message": str(exc)}
        raise Problem(422, "The rule pack has a mistake", str(exc), errors=[error]) from None
    sensors = await request.app[STORE].sensors()
    return answer(request, {"ok": True, "digest": pack_digest(text), "errors": [], "rules": _pack_json(pack, sensors)})


def _yaml_field(raw: bytes) -> str:
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise bad_param("body", "a JSON object with the pack's YAML in \"yaml\", or the YAML itself") from None
    if not isinstance(body, dict) or not isinstance(body.get("yaml"), str) or set(body) != {"yaml"}:
        raise bad_param("yaml", "the pack's YAML text, the body's only field")
    text: str = body["yaml"]
    return text
