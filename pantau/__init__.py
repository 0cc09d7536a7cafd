"""pantau's shared kernel: settings, domain types, the metric registry, the store, the CLI and the
`up` supervisor. Every service imports from here; the kernel imports from no service package
(except the CLI, which wires them together)."""

__version__ = "0.1.0"
