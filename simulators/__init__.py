"""Simulators own fleets, physical models, scenarios, faults and the load generator. They talk
to pantau only as sensors do, over MQTT (or into JSONL files).

Map: `fleet` (city manifests, scaling), `models` (traffic, air, rain and rivers on numpy),
`scenarios` (named and file scenarios), `faults` (fault injection and side log), `engine` (ticks of
messages), `output` (sinks, pacing, replay files), `fastmqtt` (pipelined QoS 1 publisher, also for
benchmarks), `load` (multi-process load generator), `cli` (`pantau simulate`). They never touch the
database or import ingest.
"""
