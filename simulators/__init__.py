"""Simulators own fleets, physical models, scenarios, faults and the load generator. They talk
to pantau only as sensors do, over MQTT (or into JSONL files)."""
