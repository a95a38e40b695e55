"""Reproducible runs: the pipeline, provenance records and the HTML report."""

from .config import RunConfig, default_toml, load_config
from .pipeline import (
    SVG_METHODS,
    PipelineConfig,
    PipelineResult,
    demo_tissue,
    evaluate_truth,
    format_recovery,
    pipeline_steps,
    run_pipeline,
    run_svg_method,
)
from .provenance import Provenance, package_versions
from .report import Section, write_report

__all__ = [
    "PipelineConfig",
    "PipelineResult",
    "RunConfig",
    "load_config",
    "default_toml",
    "run_pipeline",
    "evaluate_truth",
    "demo_tissue",
    "format_recovery",
    "pipeline_steps",
    "run_svg_method",
    "SVG_METHODS",
    "Provenance",
    "package_versions",
    "Section",
    "write_report",
]
