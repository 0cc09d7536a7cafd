"""Benchmarks that print figures: `pantau bench ingest` (bench_ingest), `pantau bench rules`
(bench_rules), and scripts run on their own (instructions.py, rules_engine.py, rules_scale.py).

Benchmarks may import any service and the simulators; no service imports them."""
