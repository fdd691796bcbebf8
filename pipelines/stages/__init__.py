"""Pipeline stages. Each stage module owns its Config dataclass and one `run(...)` that reads committed inputs,
publishes its outputs atomically per unit of work, skips committed work on rerun, and returns its funnel counts.
"""
