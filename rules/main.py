"""The rules service's two entry points (pantau.service): `register` adds `pantau rules` (and
`--check`), `run` evaluates and notifies from `Settings` until stopped."""

from __future__ import annotations

import argparse
import logging
from collections import Counter

from pantau.rulepack import rule_pack_path
from pantau.rulepack.config import load_rules
from pantau.service import Commands, serve
from pantau.settings import Settings
from pantau.store import Store
from rules.notify import AlertNotifier
from rules.worker import RuleWorker

log = logging.getLogger("rules")


def register(commands: Commands) -> None:
    """`pantau rules [--file F] [--check]`."""
    p = commands.add_parser("rules", help="run the rule engine and alert notifiers over committed readings")
    p.add_argument("--file", help="rule pack (default: [rules] file, or the shipped deploy/rules.yaml)")
    p.add_argument("--check", action="store_true", help="validate the rule pack, print a summary and exit")
    p.set_defaults(handler=_command)


async def _command(args: argparse.Namespace, settings: Settings) -> int:
    if args.check:
        path = rule_pack_path(settings, args.file)
        rules = load_rules(path)  # a RuleFileError names the file, rule and field
        kinds = Counter(rule.kind.value for rule in rules)
        print(f"{path}: {len(rules.rules)} rules ok ({', '.join(f'{k} {n}' for k, n in sorted(kinds.items()))})")
        return 0
    await run(settings, file=args.file)
    return 0


async def run(settings: Settings, *, file: str | None = None) -> None:
    """The rule worker, with the alert notifier beside it in one task group, until SIGINT/SIGTERM:
    a notifier that fails stops the worker at once with its error."""
    rules = load_rules(rule_pack_path(settings, file))
    url = settings.service_database_url("rules")
    async with Store.open(url, settings.store) as store:
        worker = RuleWorker(store, settings, rules)
        notifier = AlertNotifier(store, settings)
        await serve(worker.run(), notifier.run, stop=worker.stop)
    log.info("rules stopped")
