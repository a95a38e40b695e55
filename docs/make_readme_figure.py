"""Regenerate docs/images/demo.png from a `spatiome demo` output folder.

Usage: python docs/make_readme_figure.py demo_out docs/images/demo.png
"""

import sys

import matplotlib.pyplot as plt

import spatiome as sm


def main(demo_dir: str, target: str) -> None:
    adata = sm.io.read_h5ad(f"{demo_dir}/results.h5ad")
    top = adata.var.sort_values("moran_statistic", ascending=False).index[:2].tolist()
    fig, axes = plt.subplots(1, 4, figsize=(17, 4.2))
    sm.pl.spatial(adata, "domain", ax=axes[0], title="simulated domains")
    sm.pl.spatial(adata, "leiden", ax=axes[1], title="Leiden clusters")
    for ax, gene in zip(axes[2:], top, strict=True):
        sm.pl.spatial(adata, gene, ax=ax, title=f"{gene} (Moran's I top gene)")
    fig.tight_layout()
    sm.pl.save(fig, target, dpi=90)


if __name__ == "__main__":
    main(*sys.argv[1:3])
