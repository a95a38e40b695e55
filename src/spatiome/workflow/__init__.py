"""Reproducible runs: the pipeline, provenance records and the HTML report."""

from .pipeline import (
    PipelineConfig,
    PipelineResult,
    demo_tissue,
    evaluate_truth,
    format_recovery,
    run_pipeline,
)
from .provenance import Provenance, package_versions
from .report import Section, write_report

__all__ = [
    "PipelineConfig",
    "PipelineResult",
    "run_pipeline",
    "evaluate_truth",
    "demo_tissue",
    "format_recovery",
    "Provenance",
    "package_versions",
    "Section",
    "write_report",
]
