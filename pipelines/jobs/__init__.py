"""Pipelines as Ray jobs: job templates (configs/jobs/*.yaml), the ops CLI, generated KubeRay manifests.

    python -m pipelines.jobs submit|status|logs|stop|list|render --help

This package only builds entrypoint strings (`python -m training.train --config ...`); it never imports
training/ or evaluation/, so the dependency direction pipelines <- training <- evaluation holds.
"""
