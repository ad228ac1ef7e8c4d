"""Benchmarks: ``micropay bench NAME``. Figures, never assertions; see docs/benchmarks.md."""
