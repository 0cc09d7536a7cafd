"""Rules own rule definitions, evaluation over committed readings, the alert lifecycle and
notifiers. They read readings and never write them, and stand on the kernel alone: committed
batches come through `pantau.outbox`, alerts are written through `pantau.alerts` (the alert domain
the CLI and the API share).

The rule packs they evaluate (model, YAML format, checks) are the kernel's `pantau.rulepack`, and
the domain indices (ISPU, Siaga, BMKG rain, LOS) the kernel's `pantau.indices`: the API shows and
checks packs, and reports the indices, with the same code.

Modules:
    rules.engine     the pure evaluation core: readings in event time → RAISE/CLEAR `Signal`s, through
                     the pipeline group → order → route → evaluate → finish → reject; state export/restore
    rules.signals    what evaluation reports: `Signal` with a named `Why`, `EngineStats` with named `Skip`s
    rules.kinds      one module per rule kind (threshold, rate, index, absence, quality, composite), each an
                     `Evaluator`; base: the Protocol, the no-op stages, Series, Batch, Context
    rules.state      per-rule, per-series evaluation state that exports to JSON and loads back
    rules.windows    trailing windows and the shared histories of the aggregated thresholds
    rules.main       `pantau rules [--check]`: `register` and `run` (the worker, the notifier beside it)
    rules.worker     `pantau rules`: committed ingest batches (the outbox of docs/decisions.md D10)
                     → engine → alert transitions, exactly once; checkpoint and replay
    rules.notify     `AlertNotifier`: alert events → each sink in commit order, none lost, none doubled
                     (LISTEN pantau_alerts, a lane and a cursor per sink, gaps of uncommitted ids)
    rules.sinks      where events go: MQTT pantau/v1/{city}/alerts (+ retained snapshot) and webhook
"""
