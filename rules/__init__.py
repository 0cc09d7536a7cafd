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
                     named `Why`; every rule kind; state export/restore (rules.state, rules.windows)
    rules.worker     `pantau rules`: committed ingest batches (the outbox of docs/decisions.md D10)
                     → engine → alert transitions, exactly once; checkpoint and replay
    rules.notify     alert events → MQTT pantau/v1/{city}/alerts (+ retained snapshot) and webhook
    rules.bench      `pantau bench rules`: publish→alert latency under load
"""
