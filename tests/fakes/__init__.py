"""Real stand-ins for external services, run on loopback in tests and benchmarks."""
