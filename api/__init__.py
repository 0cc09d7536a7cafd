"""The API owns the aiohttp app: REST under /api/v1 (and, to come, the live stream, access control
and the operator screen). It reads the store and acts on alerts through the kernel's alert domain
(`pantau.alerts`), never writes readings, and imports only the kernel (docs/architecture.md)."""
