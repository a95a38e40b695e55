"""The scanpy + squidpy peer of ``spatiome run``: the work both do, timed step by step.

Run by ``pipeline_scale.py`` in a fresh process (it can also be run alone)::

    python benchmarks/_scanpy_squidpy_pipeline.py --input sim.h5ad --out OUT [--seed 0]

Steps, each timed with ``time.perf_counter`` and written to ``OUT/steps.json`` as it ends,
in the shape of spatiome's ``provenance.json`` (``{"steps": [{"name": ..., "seconds": ...}]}``):

``read``           ``anndata.read_h5ad`` (``X`` made float32, as scanpy's tutorials do);
``qc``             ``sc.pp.calculate_qc_metrics`` with mitochondrial, ribosomal and
                   haemoglobin gene sets (spatiome's ``pp.qc_metrics`` makes the same call);
``normalize``      ``sc.pp.normalize_total`` then ``sc.pp.log1p``;
``hvg``            ``sc.pp.highly_variable_genes(flavor="seurat", n_top_genes=2000)``;
``pca``            ``sc.pp.pca(n_comps=30, svd_solver="arpack", mask_var="highly_variable")``;
``neighbors``      ``sc.pp.neighbors(n_neighbors=15)``;
``umap``           ``sc.tl.umap``;
``leiden``         ``sc.tl.leiden(flavor="igraph", n_iterations=2)`` (as spatiome calls it);
``spatial_graph``  ``sq.gr.spatial_neighbors(coord_type="grid", n_neighs=6)``: the Visium
                   hexagonal grid;
``moran``          ``sq.gr.spatial_autocorr(mode="moran", n_perms=None)`` on all genes, with
                   Benjamini-Hochberg q-values;
``markers``        ``sc.tl.rank_genes_groups(method="wilcoxon", pts=True)`` on the Leiden
                   clusters;
``figures``        six PNGs: UMAP and tissue coloured by cluster, a marker dot plot, and the
                   tissue coloured by the three genes of highest Moran's I;
``write``          ``adata.write_h5ad`` (no compression, anndata's default).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import anndata  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import scanpy as sc  # noqa: E402
import squidpy as sq  # noqa: E402

N_TOP_GENES = 2000
N_COMPS = 30
N_NEIGHBORS = 15
N_GENE_MAPS = 3


class StepTimer:
    """Wall seconds of named steps, written to ``path`` after each step (a run stopped
    midway leaves the steps it finished) as ``{"steps": [{"name", "seconds"}]}``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.steps: list[dict[str, float | str]] = []

    @contextmanager
    def step(self, name: str):
        """Time the body of a ``with`` block under ``name``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.steps.append({"name": name, "seconds": round(time.perf_counter() - start, 3)})
            self.path.write_text(json.dumps({"steps": self.steps}, indent=2) + "\n")
            print(f"{name}: {self.steps[-1]['seconds']:.1f} s", flush=True)


def read_input(path: Path) -> anndata.AnnData:
    """The simulated tissue, with a float32 working matrix (counts stay in their layer)."""
    adata = anndata.read_h5ad(path)
    adata.X = adata.X.astype(np.float32)
    return adata


def qc_metrics(adata: anndata.AnnData) -> None:
    """scanpy's QC metrics with the usual gene sets (case-insensitive prefixes)."""
    names = adata.var_names.str.upper()
    adata.var["mt"] = names.str.startswith("MT-")
    adata.var["ribo"] = names.str.startswith(("RPS", "RPL"))
    adata.var["hb"] = names.str.match(r"^HB[^(P)]")
    sc.pp.calculate_qc_metrics(
        adata, qc_vars=("mt", "ribo", "hb"), percent_top=None, log1p=False, inplace=True
    )


def normalize(adata: anndata.AnnData) -> None:
    """Library-size normalization and log1p."""
    sc.pp.normalize_total(adata)
    sc.pp.log1p(adata)


def save_figure(draw: Callable[[], object], path: Path) -> None:
    """Run a plotting call that draws on the current figure and save that figure as PNG."""
    draw()
    plt.gcf().savefig(path, dpi=100, bbox_inches="tight")
    plt.close("all")


def figures(adata: anndata.AnnData, out: Path) -> None:
    """The six figures: embedding, tissue, markers and three spatially variable genes."""
    top_genes = list(adata.uns["moranI"].index[:N_GENE_MAPS])
    spot_size = 1.0 if adata.n_obs > 100_000 else None
    save_figure(lambda: sc.pl.umap(adata, color="leiden", show=False), out / "umap.png")
    save_figure(
        lambda: sq.pl.spatial_scatter(adata, color="leiden", shape=None, size=spot_size),
        out / "tissue_leiden.png",
    )
    save_figure(
        lambda: sc.pl.rank_genes_groups_dotplot(adata, n_genes=3, dendrogram=False, show=False),
        out / "markers.png",
    )
    for gene in top_genes:
        save_figure(
            lambda gene=gene: sq.pl.spatial_scatter(adata, color=gene, shape=None, size=spot_size),
            out / f"tissue_{gene}.png",
        )


def run(input_path: Path, out: Path, seed: int) -> None:
    """Every step in order; step times in ``out/steps.json``, the result in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    timer = StepTimer(out / "steps.json")
    with timer.step("read"):
        adata = read_input(input_path)
    with timer.step("qc"):
        qc_metrics(adata)
    with timer.step("normalize"):
        normalize(adata)
    with timer.step("hvg"):
        sc.pp.highly_variable_genes(adata, flavor="seurat", n_top_genes=N_TOP_GENES)
    with timer.step("pca"):
        sc.pp.pca(
            adata, n_comps=N_COMPS, svd_solver="arpack", mask_var="highly_variable",
            random_state=seed,
        )  # fmt: skip
    with timer.step("neighbors"):
        sc.pp.neighbors(adata, n_neighbors=N_NEIGHBORS, random_state=seed)
    with timer.step("umap"):
        sc.tl.umap(adata, random_state=seed)
    with timer.step("leiden"):
        sc.tl.leiden(adata, flavor="igraph", n_iterations=2, directed=False, random_state=seed)
    with timer.step("spatial_graph"):
        sq.gr.spatial_neighbors(adata, coord_type="grid", n_neighs=6)
    with timer.step("moran"):
        sq.gr.spatial_autocorr(
            adata, mode="moran", genes=adata.var_names, n_perms=None, corr_method="fdr_bh",
            n_jobs=1,
        )  # fmt: skip
    with timer.step("markers"):
        sc.tl.rank_genes_groups(adata, "leiden", method="wilcoxon", pts=True)
    with timer.step("figures"):
        figures(adata, out)
    with timer.step("write"):
        adata.write_h5ad(out / "results.h5ad")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", type=Path, required=True, help="an .h5ad with counts in X")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    run(args.input, args.out, args.seed)


if __name__ == "__main__":
    main()
