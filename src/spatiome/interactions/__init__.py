"""Cell-cell interactions: neighbourhood statistics between groups, niches and
ligand-receptor analysis on the spatial graph.

Results use squidpy's ``uns`` keys and shapes where squidpy has the same analysis
(``{key}_nhood_enrichment``, ``{key}_co_occurrence``, ``{key}_ripley_{mode}``,
``{key}_interactions``), so squidpy's plots read them.
"""

from .ligrec import gene_symbols, ligrec, ligrec_local
from .neighbourhood import co_occurrence, interaction_matrix, nhood_enrichment, ripley
from .niches import choose_n_niches, niches
from .resource import ligand_receptor_pairs, resource_names

__all__ = [
    "choose_n_niches",
    "co_occurrence",
    "gene_symbols",
    "interaction_matrix",
    "ligand_receptor_pairs",
    "ligrec",
    "ligrec_local",
    "nhood_enrichment",
    "niches",
    "resource_names",
    "ripley",
]
