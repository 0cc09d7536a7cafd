"""Ingest owns the path MQTT → decode → validate → batch → COPY, dead letters in
`rejected_messages`, and acknowledging messages only after their readings are committed.
It writes readings and rejections and reads the sensor registry; it never renders HTTP and
never evaluates rules (rules get committed batches through the outbox, `pantau.outbox`). It
imports only the kernel."""
