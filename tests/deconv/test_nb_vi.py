"""The cell2location-style variational model; skipped without the `deep` extra."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from spatiome.deconv import deconvolve, reference_signatures

torch = pytest.importorskip("torch")


def test_nb_vi_recovers_fractions_and_is_deterministic(synth, reference):
    torch.set_num_threads(1)
    signatures = reference_signatures(reference[0], select_genes=False)
    spots = synth.make_spots(reference[1], n_spots=150, gene_effect_sd=0.3)
    kwargs = {"method": "nb_vi", "n_epochs": 800, "cells_per_spot": 8.0, "random_state": 0}
    first = deconvolve(spots, signatures, **kwargs)
    second = deconvolve(spots, signatures, **kwargs)
    pd.testing.assert_frame_equal(first, second)
    info = spots.uns["spatiome"]["cell_type_fractions"]
    assert info["n_epochs"] == 800 and np.isfinite(info["final_loss"])
    error = synth.rmse(first, spots.obsm["truth"])
    baseline = synth.rmse(deconvolve(spots, signatures, method="nnls"), spots.obsm["truth"])
    assert error < 0.08
    assert error < 1.1 * baseline


def test_torch_is_not_imported_by_the_package():
    import subprocess
    import sys

    code = "import spatiome.deconv, sys; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
