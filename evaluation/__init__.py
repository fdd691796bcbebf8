"""Evaluation: procedural zero-shot and retrieval datasets (tasks), metrics, Ray orchestration (run) and a
static HTML dashboard (dashboard). Metric code depends only on the `metrics.Encoder` protocol."""
