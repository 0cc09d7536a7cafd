"""Rules own rule definitions, evaluation over committed readings, the alert lifecycle and
notifiers. They read readings and never write them.

Built so far:
    rules.indices    ISPU, US EPA AQI (PM2.5), Siaga levels, BMKG rain classes, degree of saturation / LOS
    rules.config     YAML rule files → frozen, validated rule values (`load_rules`); default pack deploy/rules.yaml
    rules.durations  "90s" / "30m" / "1h30m" / "2d" ↔ timedelta
    rules.errors     RuleError (a PantauError) and its subclasses
    rules.alerts     the alert store: lifecycle with named outcomes, one open alert per rule and scope
                     (enforced by the database), escalation, flapping, silences, NOTIFY per event
    rules.engine     the pure evaluation core: readings in event time → RAISE/CLEAR `Signal`s with a
                     named `Why`; threshold (for, hysteresis, gaps), rate of change, index bands
                     (ISPU, Siaga, LOS, rain), absence; state export/restore (rules.state, rules.windows)
Not built yet (see docs/decisions.md D10 for the hand-off from ingest): evaluation wired to
committed batches, `pantau rules`, data-quality and composite evaluation, MQTT and webhook notifiers.
"""
