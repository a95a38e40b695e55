"""Command line: ``spatiome demo``, ``spatiome run``, ``spatiome datasets``."""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from ._core.validate import SpatiomeInputError


def _add_pipeline_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out",
        default="spatiome_out",
        help="output folder (created if missing; checked for being writable before the work)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--n-domains",
        type=int,
        default=None,
        help="target number of Leiden clusters and of spatial domains (default: Leiden at "
        "resolution 1.0, and as many domains as Leiden clusters)",
    )
    parser.add_argument(
        "--svg",
        default="moran,sparkx",
        help="comma-separated spatially variable gene tests, the first drives svg.csv: "
        "moran, geary, sparkx, spatialde, trendseek (default: moran,sparkx)",
    )
    parser.add_argument(
        "--domains",
        default="cluster",
        help="comma-separated spatial domain methods, the first drives the markers: cluster, "
        "bison, gnn (needs torch); 'none' skips (default: cluster)",
    )
    parser.add_argument(
        "--modules",
        default="stihc",
        help="comma-separated gene module methods on the spatially variable genes: stihc, "
        "aeh; 'none' skips (default: stihc)",
    )
    parser.add_argument(
        "--reference",
        default=None,
        metavar="REFERENCE",
        help="labelled single-cell reference (raw counts) for cell-type deconvolution: an "
        ".h5ad; a folder holding reference_counts.csv[.gz] and reference_celltypes.csv (or "
        "one .h5ad); the two tables joined by a comma as COUNTS,LABELS, count table first "
        "(e.g. --reference ref/counts.csv.gz,ref/celltypes.csv; LABELS has the cell id in "
        "its first column); or a registered dataset that has a reference (e.g. "
        "rctd_merfish_hypothalamus). An existing path wins over a name",
    )
    parser.add_argument(
        "--reference-labels",
        default="cell_type",
        metavar="COLUMN",
        help="cell-type column of the reference: of the .h5ad's obs, or of the LABELS table "
        "(default: cell_type; in a table, a column named cell_type, celltype, label(s) or "
        "type, else the only column besides the cell id, is taken without this option)",
    )
    parser.add_argument(
        "--deconv",
        default="rctd",
        help="deconvolution method: rctd, nnls, nb_vi (needs torch) (default: rctd)",
    )
    parser.add_argument(
        "--deconv-smoothing",
        type=float,
        default=0.0,
        help="strength of the spatial (CAR) prior on the cell-type fractions (default: 0, off)",
    )
    parser.add_argument(
        "--batch-correction",
        default="harmony",
        help="with several samples: harmony, mnn, cca or none (default: harmony)",
    )
    parser.add_argument(
        "--label-key",
        default=None,
        help="obs column of biological labels for the integration diagnostics "
        "(default: the first domain method's labels)",
    )
    parser.add_argument(
        "--modality",
        default=None,
        choices=("protein", "atac", "image"),
        help="a second modality on the same spots, integrated with the RNA (needs torch)",
    )
    parser.add_argument(
        "--modality-input",
        default=None,
        help=".h5ad with the second modality (same spot names); with --modality image and "
        "no input, features come from the histology image of the input",
    )
    parser.add_argument(
        "--groups",
        default=None,
        metavar="COLUMN",
        help="obs column of the groups (cell types, clusters) whose neighbourhoods and "
        "interactions are compared (default: label key, a cell_type column, deconvolved cell "
        "types, else the domains)",
    )
    parser.add_argument(
        "--interactions",
        action="store_true",
        help="score ligand-receptor pairs for spatial co-expression (needs the "
        "'interactions' extra for the curated resource)",
    )
    parser.add_argument(
        "--lr-resource",
        default="consensus",
        metavar="NAME_OR_CSV",
        help="ligand-receptor pairs: a resource of liana's table (default: consensus) or a "
        "CSV with ligand and receptor columns",
    )
    parser.add_argument(
        "--organism",
        default="auto",
        choices=("auto", "human", "mouse"),
        help="organism of the ligand-receptor resource (default: from the gene symbols)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="recompute every step instead of restoring unchanged ones from the output's cache",
    )
    parser.add_argument(
        "--no-cache", action="store_true", help="neither use nor write the step cache"
    )
    parser.add_argument("--no-umap", action="store_true", help="skip UMAP")
    parser.add_argument(
        "--output-format",
        choices=("h5ad", "spatialdata", "both"),
        default="h5ad",
        help="write the annotated data as results.h5ad (default), as a SpatialData store "
        "results.zarr, or both",
    )
    parser.add_argument(
        "--keep-low-quality",
        action="store_true",
        help="keep spots flagged by quality control in the statistics (default: they are "
        "removed before normalization and kept, marked, in results.h5ad)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument(
        "--dask-scheduler",
        default=None,
        metavar="ADDRESS",
        help="run the per-gene and per-block work (SVG tests, ligand-receptor pairs) on the "
        "Dask cluster of this scheduler, e.g. tcp://host:8786 (needs the 'dask' extra; "
        "results are identical to a local run)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    parser = argparse.ArgumentParser(
        prog="spatiome", description="Spatial transcriptomics from counts to report."
    )
    parser.add_argument("--version", action="version", version=f"spatiome {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="run the pipeline on a built-in simulated tissue")
    _add_pipeline_options(demo)
    demo.add_argument("--n-spots", type=int, default=3000)
    demo.add_argument("--n-genes", type=int, default=300)

    run = commands.add_parser(
        "run",
        help="run the pipeline on a dataset, from options or a TOML config",
        # options left out keep the config's value (or the default): see _config
        argument_default=argparse.SUPPRESS,
    )
    run.add_argument(
        "config",
        nargs="?",
        default=None,
        help="TOML configuration (see 'spatiome config --default'); options given on the "
        "command line override it",
    )
    run.add_argument(
        "--input",
        action="append",
        help="Space Ranger outs/, Xenium, MERSCOPE, CosMx, Stereo-seq or CODEX folder, .h5ad, "
        "SpatialData .zarr store, a folder with a counts table and coords.csv, or a registered "
        "dataset name (see 'spatiome datasets list'; an existing "
        "path wins); repeat for several samples (combined, sample effects corrected)",
    )
    run.add_argument(
        "--until",
        metavar="STEP",
        help="stop after this step (its result stays in the output's cache, with a marker "
        "in OUT/steps/STEP.done); used by workflow/Snakefile to run one step per rule",
    )
    run.add_argument(
        "--sample-names",
        default=None,
        help="comma-separated names of the samples, one per --input (default: from the paths)",
    )
    _add_pipeline_options(run)
    for action in run._actions:
        if action.dest not in ("help", "config"):
            action.default = argparse.SUPPRESS

    config = commands.add_parser("config", help="print or check run configurations")
    what = config.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--default", action="store_true", help="print every key with its default, documented"
    )
    what.add_argument("--check", metavar="CONFIG", help="validate a TOML configuration")
    what.add_argument(
        "--steps",
        metavar="CONFIG",
        help="print the steps a run of CONFIG on one sample performs, one per line",
    )

    data = commands.add_parser("datasets", help="public datasets known to spatiome")
    data_commands = data.add_subparsers(dest="datasets_command", required=True)
    data_commands.add_parser("list", help="list the registered datasets")
    where = data_commands.add_parser("path", help="folder holding a dataset (downloads it)")
    where.add_argument("name")
    return parser


#: Command-line options -> PipelineConfig fields (with the conversion of the text).
_OPTION_FIELDS = {
    "seed": ("seed", None),
    "n_domains": ("n_domains", None),
    "no_umap": ("umap", lambda flag: not flag),
    "output_format": ("output_format", None),
    "keep_low_quality": ("qc_remove", lambda flag: not flag),
    "svg": ("svg_methods", "names"),
    "domains": ("domain_methods", "names"),
    "modules": ("module_methods", "names"),
    "reference": ("reference", None),
    "reference_labels": ("reference_labels", None),
    "deconv": ("deconv_method", None),
    "deconv_smoothing": ("deconv_smoothing", None),
    "batch_correction": ("batch_correction", None),
    "label_key": ("label_key", None),
    "modality": ("modality", None),
    "modality_input": ("modality_input", None),
    "groups": ("group_key", None),
    "interactions": ("interactions", None),
    "lr_resource": ("lr_resource", None),
    "organism": ("organism", None),
    "dask_scheduler": ("dask_scheduler", None),
}


def _names(text: str) -> tuple[str, ...]:
    listed = tuple(m.strip() for m in text.split(",") if m.strip())
    return () if listed == ("none",) else listed


def _config(args: argparse.Namespace, base=None):
    """The pipeline parameters: ``base`` (a config file's, or the defaults) with the
    options given on the command line on top."""
    from dataclasses import asdict

    from .workflow import PipelineConfig

    values = asdict(base) if base is not None else {}
    for option, (name, convert) in _OPTION_FIELDS.items():
        if not hasattr(args, option):
            continue
        value = getattr(args, option)
        if convert == "names":
            value = _names(value)
        elif convert is not None:
            value = convert(value)
        values[name] = value
    return PipelineConfig(**values)


def _finish(result, started: float) -> None:
    print(f"wrote {len(result.files)} files to {result.files['report'].parent}:")
    width = max(len(kind) for kind in result.files)
    for kind, path in sorted(result.files.items()):
        print(f"  {kind:<{width}} {path}")
    from .workflow.pipeline import console_summary

    print(f"{console_summary(result.summary)}; {time.perf_counter() - started:.1f} s")


def _demo(args: argparse.Namespace) -> int:
    from .workflow import demo_tissue, format_recovery, run_pipeline
    from .workflow.inputs import output_errors

    started = time.perf_counter()
    config = _config(args)
    _resolve_reference_option(config, None)
    _check_scheduler(config.dask_scheduler)
    _check_output(args.out)
    tissue = demo_tissue(seed=args.seed, n_spots=args.n_spots, n_genes=args.n_genes)
    if config.n_domains is None:
        config.n_domains = int(tissue.obs["domain"].nunique())
    with output_errors(args.out):
        result = run_pipeline(
            tissue,
            args.out,
            config,
            command="demo",
            truth=True,
            title="spatiome demo: simulated tissue",
            progress=not args.no_progress,
            cache=not args.no_cache,
            force=args.force,
        )
    print(format_recovery(result.summary))
    _finish(result, started)
    return 0


def sample_names(sources: Sequence[Path], names: str | None) -> list[str]:
    """One distinct name per input: given, or the file or folder name.

    Examples
    --------
    >>> sample_names([Path("a/outs"), Path("b/outs"), Path("c.h5ad")], None)
    ['a', 'b', 'c']
    >>> sample_names([Path("x.h5ad"), Path("y.h5ad")], "left, right")
    ['left', 'right']
    """
    if names is not None:
        given = [n.strip() for n in names.split(",")]
        if len(given) != len(sources) or len(set(given)) != len(given) or "" in given:
            raise SpatiomeInputError(
                f"--sample-names needs {len(sources)} distinct names, one per --input; got {given}"
            )
        return given
    stems = [s.parent.name if s.name == "outs" else s.name.split(".")[0] for s in sources]
    if len(set(stems)) == len(stems):
        return stems
    return [f"{stem}_{k}" for k, stem in enumerate(stems)]


def _run(args: argparse.Namespace) -> int:
    from .workflow import run_pipeline
    from .workflow.config import load_config
    from .workflow.inputs import output_errors, read_input, resolve_input

    started = time.perf_counter()
    loaded = load_config(args.config) if args.config is not None else None
    config_dir = loaded.source.parent if loaded is not None and loaded.source else None
    if hasattr(args, "input"):
        inputs = [resolve_input(text) for text in args.input]
    elif loaded is not None and loaded.inputs:
        inputs = [resolve_input(path, base=config_dir) for path in loaded.inputs]
    else:
        raise SpatiomeInputError(
            "no input: pass --input PATH (or a registered dataset name), or a config whose "
            "[input] paths name the data"
        )
    sources = [source.path for source in inputs]
    names_text = getattr(args, "sample_names", None)
    if names_text is None and loaded is not None and loaded.sample_names:
        names_text = ",".join(loaded.sample_names)
    config = _config(args, loaded.pipeline if loaded is not None else None)
    _resolve_reference_option(config, None if hasattr(args, "reference") else config_dir)
    out = getattr(args, "out", None) or (loaded.out if loaded is not None else "spatiome_out")
    names = sample_names(sources, names_text) if len(sources) > 1 else []
    _check_scheduler(config.dask_scheduler)
    _check_output(out)
    if len(sources) == 1:
        adata = read_input(inputs[0])
    else:
        from .integrate import concat_samples

        adata = concat_samples({name: read_input(s) for name, s in zip(names, inputs, strict=True)})
    title = loaded.title if loaded is not None and loaded.title else ""
    with output_errors(out):
        result = run_pipeline(
            adata,
            out,
            config,
            command="run",
            inputs=sources,
            title=title or f"spatiome report: {', '.join(s.name for s in sources)}",
            progress=not getattr(args, "no_progress", False),
            config_file=args.config,
            cache=not getattr(args, "no_cache", False),
            force=getattr(args, "force", False),
            until=getattr(args, "until", None),
            copy_input=False,  # the object read here has no other user
        )
    if "stopped_after" in result.summary:
        print(f"step {result.summary['stopped_after']} done: {result.files['step']}")
        return 0
    _finish(result, started)
    return 0


def _resolve_reference_option(config, config_dir: Path | None) -> None:
    """Check the reference before any work; a config file's value is made self-contained.

    ``config_dir`` is the folder of the configuration file the value came from (None when
    it came from the command line): a dataset name or a COUNTS,LABELS pair there was
    resolved against it, and is written back as the name or the two absolute paths.
    """
    from .workflow.inputs import resolve_reference

    if config.reference is None:
        return
    source = resolve_reference(config.reference, base=config_dir)
    if source.kind == "dataset" or (config_dir is not None and "," in config.reference):
        config.reference = source.text


def _check_scheduler(address: str | None) -> None:
    """Reach the Dask scheduler before reading the input: one clear error if it cannot be."""
    from .workflow.dask_cluster import check_scheduler

    check_scheduler(address)


def _check_output(out) -> None:
    """Create and probe the output folder before the work; warnings go to stderr."""
    from .workflow.inputs import check_output_dir

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_output_dir(out)
    for warning in caught:
        print(f"spatiome: warning: {warning.message}", file=sys.stderr)


def _config_command(args: argparse.Namespace) -> int:
    from .workflow.config import default_toml, load_config

    if args.default:
        sys.stdout.write(default_toml())
        return 0
    if args.steps is not None:
        from .workflow import pipeline_steps

        steps = pipeline_steps(load_config(args.steps).pipeline)
        print("\n".join(s for s in steps if s != "report"))
        return 0
    loaded = load_config(args.check)
    print(f"{args.check}: valid ({len(loaded.inputs)} input(s), output {loaded.out})")
    return 0


def _datasets(args: argparse.Namespace) -> int:
    from . import datasets

    if args.datasets_command == "list":
        table = datasets.list_datasets()
        print(table.to_string())
    else:
        print(datasets.path(args.name))
    return 0


def _stop_on_signal(signum: int, frame: object) -> None:
    """SIGTERM (a scheduler's walltime) ends the run like Ctrl-C: cleanup blocks run, so no
    half-written output or staging folder stays behind."""
    import logging

    logging.getLogger("spatiome").warning("stopped by signal %d before the end", signum)
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``spatiome`` command."""
    import signal
    import threading

    args = build_parser().parse_args(argv)
    handlers = {"demo": _demo, "run": _run, "config": _config_command, "datasets": _datasets}
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _stop_on_signal)
    try:
        return handlers[args.command](args)
    except (SpatiomeInputError, FileNotFoundError) as err:
        print(f"spatiome: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        where = f"{err.filename}: " if err.filename is not None else ""
        print(
            f"spatiome: error: {where}{err.strerror or err}: check that this path can be read "
            "(inputs) or written (--out)",
            file=sys.stderr,
        )
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
