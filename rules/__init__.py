"""Rules will own rule definitions, evaluation over committed readings, the alert lifecycle and
notifiers. They read readings and never write them. (Not built yet: see the rule-engine issue.)

Built so far (pure Python, no database or MQTT):
    rules.indices    ISPU, US EPA AQI (PM2.5), Siaga levels, BMKG rain classes, degree of saturation / LOS
    rules.config     YAML rule files → frozen, validated rule values (`load_rules`); default pack deploy/rules.yaml
    rules.durations  "90s" / "30m" / "1h30m" / "2d" ↔ timedelta
    rules.errors     RuleError (a PantauError) and its subclasses
"""
