"""Progress of long computations: the Progress/listen contract and every instrumented method.

Each method runs on a tiny input twice, once plainly and once with a listener and INFO
logging: the listener must see every task start at 0 and climb strictly to its total, the
log must hold a start and an end line per task, and both runs must give bit-identical
results (reporting progress must not touch the random streams or the arithmetic).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import spatiome as sm
from spatiome._core.progress import Progress, listen

# ---------------------------------------------------------------------------------------
# The Progress / listen contract


class Recorder:
    """A listener that keeps every update."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int, int, str, str]] = []

    def __call__(self, task: str, done: int, total: int, unit: str, details: str) -> None:
        self.events.append((task, done, total, unit, details))

    def by_task(self) -> dict[str, list[tuple[int, int, str]]]:
        tasks: dict[str, list[tuple[int, int, str]]] = defaultdict(list)
        for task, done, total, unit, _ in self.events:
            tasks[task].append((done, total, unit))
        return dict(tasks)


def _messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "spatiome"]


def test_listener_sees_start_every_update_and_total():
    recorder = Recorder()
    with listen(recorder):
        with Progress("demo", total=5, unit="sweep") as bar:
            bar.update(2, "half")
            bar.advance(1)
            bar.advance(2, "last")
    assert [e[1] for e in recorder.events] == [0, 2, 3, 5]
    assert {e[2] for e in recorder.events} == {5} and {e[3] for e in recorder.events} == {"sweep"}
    assert recorder.events[1][4] == "half" and recorder.events[-1][4] == "last"
    assert bar.done == 5


def test_leaving_the_block_completes_the_count():
    recorder = Recorder()
    with listen(recorder):
        with Progress("demo", total=4, unit="epoch") as bar:
            bar.update(1)
    assert [e[1] for e in recorder.events] == [0, 1, 4]


def test_no_listener_outside_the_block():
    recorder = Recorder()
    with listen(recorder):
        pass
    with Progress("demo", total=2, unit="epoch") as bar:
        bar.update(1)
    assert recorder.events == []


def test_start_and_end_logged_once_at_info(caplog):
    caplog.set_level(logging.INFO, logger="spatiome")
    with Progress("demo", total=3, unit="epoch", log_every=3600) as bar:
        for epoch in range(3):
            bar.update(epoch + 1, f"loss {1.0 / (epoch + 1):.3g}")
        bar.update(3)  # a repeated final update logs nothing more
    messages = _messages(caplog)
    assert messages[0] == "demo: 3 epochs to go"
    assert len(messages) == 2 and messages[1].startswith("demo: done, 3 epochs in ")
    assert {r.levelno for r in caplog.records if r.name == "spatiome"} == {logging.INFO}


def test_intermediate_lines_are_throttled(caplog):
    caplog.set_level(logging.INFO, logger="spatiome")
    with Progress("demo", total=4, unit="sweep", log_every=0.0) as bar:
        for sweep in range(4):
            bar.update(sweep + 1, "burn-in")
    messages = _messages(caplog)
    assert len(messages) == 5  # start, sweeps 1-3, end
    assert messages[1].startswith("demo: sweep 1/4, burn-in (") and "left" in messages[1]
    assert messages[-1].startswith("demo: done, 4 sweeps in ")


def test_exception_logs_where_it_stopped_not_a_completion(caplog):
    caplog.set_level(logging.INFO, logger="spatiome")
    recorder = Recorder()
    with pytest.raises(RuntimeError, match="diverged"), listen(recorder):
        with Progress("demo", total=10, unit="epoch") as bar:
            bar.update(3)
            raise RuntimeError("diverged")
    messages = _messages(caplog)
    assert not any("done" in m for m in messages)
    assert messages[-1].startswith("demo: stopped by RuntimeError at 3/10 epochs")
    assert [e[1] for e in recorder.events] == [0, 3]


def test_nothing_to_do_still_starts_and_ends(caplog):
    caplog.set_level(logging.INFO, logger="spatiome")
    recorder = Recorder()
    with listen(recorder), Progress("demo", total=0, unit="epoch"):
        pass
    assert [e[1:3] for e in recorder.events] == [(0, 0)]
    messages = _messages(caplog)
    assert messages[0] == "demo: 0 epochs to go" and messages[1].startswith("demo: done")


def test_a_listener_can_cancel():
    def cancel(task, done, total, unit, details):
        if done >= 2:
            raise KeyboardInterrupt

    finished = []
    with pytest.raises(KeyboardInterrupt), listen(cancel):
        with Progress("demo", total=5, unit="epoch") as bar:
            for epoch in range(5):
                bar.update(epoch + 1)
                finished.append(epoch)
    assert finished == [0]


# ---------------------------------------------------------------------------------------
# Instrumented methods on tiny inputs


def _tissue() -> ad.AnnData:
    return sm.datasets.simulate_tissue(
        n_spots=120, n_genes=30, n_domains=3, patterns=("domain",), random_state=0
    )


def _run_gnn(objective: str) -> Callable[[], dict]:
    def run() -> dict:
        pytest.importorskip("torch")
        from spatiome.domains.gnn import gnn

        out = gnn(_tissue(), 3, objective=objective, hidden_dims=(8, 4), n_epochs=6,
                  n_top_genes=None, n_jobs=1, n_init=1, copy=True)  # fmt: skip
        return {
            "embedding": out.obsm["X_gnn"],
            "labels": out.obs["gnn"].to_numpy(),
            "loss": out.uns["spatiome"]["gnn"]["loss"],
        }

    return run


def _run_bison(init: str) -> Callable[[], dict]:
    def run() -> dict:
        out = sm.domains.bison(_tissue(), 3, 2, n_iterations=12, min_gene_fraction=0.0,
                               init=init, random_state=1, copy=True)  # fmt: skip
        info = out.uns["spatiome"]["bison"]
        return {
            "labels": out.obs["bison"].to_numpy(),
            "prob": out.var["bison_prob_discriminating"].to_numpy(),
            "groups": out.var["bison_gene_group"].to_numpy(),
            "log_posterior": info["log_posterior"],
            "agreement": info["spot_agreement"],
        }

    return run


def _deconv_data(n_spots: int = 60) -> tuple[ad.AnnData, pd.DataFrame]:
    rng = np.random.default_rng(0)
    n_types, n_genes = 3, 40
    profiles = rng.gamma(0.5, 1.0, (n_types, n_genes))
    profiles *= 40.0 / profiles.sum(axis=1, keepdims=True)
    fractions = rng.dirichlet(np.ones(n_types), n_spots)
    spots = ad.AnnData(
        rng.poisson(6.0 * fractions @ profiles).astype(np.float32),
        var=pd.DataFrame(index=[f"g{j}" for j in range(n_genes)]),
    )
    spots.obsm["spatial"] = rng.uniform(0.0, 10.0, (n_spots, 2))
    signatures = pd.DataFrame(profiles.T, index=spots.var_names, columns=["a", "b", "c"])
    return spots, signatures


def _run_deconv(**kwargs) -> Callable[[], dict]:
    def run() -> dict:
        if kwargs.get("method") == "nb_vi":
            pytest.importorskip("torch")
        spots, signatures = _deconv_data()
        fractions = sm.deconv.deconvolve(spots, signatures, **kwargs)
        out = {"fractions": fractions.to_numpy(), **{c: spots.obs[c].to_numpy() for c in spots.obs}}
        info = spots.uns["spatiome"]["cell_type_fractions"]
        out.update({key: info[key] for key in ("sigma", "final_loss") if key in info})
        return out

    return run


def _run_doublets(classifier: bool) -> Callable[[], dict]:
    def run() -> dict:
        cells = sm.datasets.simulate_tissue(
            n_spots=150, n_genes=40, layout="random", n_cell_types=3, single_cells=True,
            random_state=0,
        )  # fmt: skip
        out = sm.pp.doublets(cells, classifier=classifier, copy=True)
        columns = {c: out.obs[c].to_numpy() for c in out.obs if c.startswith("doublet")}
        return {**columns, "simulated": out.uns["spatiome"]["doublets"]["simulated_scores"]}

    return run


def _run_multimodal() -> dict:
    pytest.importorskip("torch")
    from spatiome.integrate.multimodal import multimodal

    rng = np.random.default_rng(0)
    rna = _tissue()
    protein = ad.AnnData(
        rng.poisson(20.0, (rna.n_obs, 8)).astype(np.float32),
        obs=pd.DataFrame(index=rna.obs_names),
    )
    out = multimodal(rna, protein, n_domains=3, n_epochs=5, latent_dim=8, n_pcs=None,
                     n_init=1, n_jobs=1, copy=True)  # fmt: skip
    return {
        "embedding": out.obsm["X_multimodal"],
        "weights": out.obsm["X_multimodal_weights"].to_numpy(),
        "labels": out.obs["multimodal"].to_numpy(),
        "loss": out.uns["spatiome"]["X_multimodal"]["loss"],
    }


# method, its run, and the tasks it reports (task, unit, total or None when data-dependent)
METHODS = [
    ("gnn reconstruction", _run_gnn("reconstruction"), [("domains.gnn", "epoch", 6)]),
    ("gnn contrastive", _run_gnn("contrastive"), [("domains.gnn", "epoch", 6)]),
    ("bison kmeans", _run_bison("kmeans"), [("domains.bison", "sweep", 12)]),
    ("bison random", _run_bison("random"), [("domains.bison", "sweep", 12)]),
    ("nnls", _run_deconv(method="nnls"), [("deconv.nnls", "spot", 60)]),
    (
        "nnls smoothing",
        _run_deconv(method="nnls", smoothing=0.5),
        [("deconv.nnls", "spot", 60), ("deconv.nnls smoothing", "round", 10)],
    ),
    (
        "rctd smoothing",
        _run_deconv(method="rctd", smoothing=0.5),
        [
            ("deconv.rctd sigma", "round", 4),
            ("deconv.rctd", "spot", 60),
            ("deconv.rctd smoothing", "round", 10),
        ],
    ),
    (
        "rctd doublet",
        _run_deconv(method="rctd", mode="doublet"),
        [
            ("deconv.rctd sigma", "round", 4),
            ("deconv.rctd", "spot", 60),
            ("deconv.rctd doublet mode", "fit", None),
        ],
    ),
    (
        "nb_vi",
        _run_deconv(method="nb_vi", n_epochs=4, batch_size=25),
        [("deconv.nb_vi", "epoch", 4)],
    ),
    ("doublets", _run_doublets(True), [("pp.doublets", "phase", 8)]),
    ("doublets without classifier", _run_doublets(False), [("pp.doublets", "phase", 6)]),
    ("multimodal", _run_multimodal, [("integrate.multimodal", "epoch", 5)]),
]


@pytest.fixture
def small_pln_table(monkeypatch):
    """RCTD's table of Poisson-log-normal probabilities up to 20 counts instead of 200.

    Building the table dominates RCTD's time on tiny inputs; larger counts are integrated
    directly, and both runs of a test use the same table, so the comparison holds.
    """
    from spatiome.deconv import _pln

    monkeypatch.setattr(_pln, "X_CAP", 20)


def _assert_same(first: dict, second: dict) -> None:
    assert first.keys() == second.keys()
    for key, value in first.items():
        value, other = np.asarray(value), np.asarray(second[key])
        if value.dtype.kind == "f":
            np.testing.assert_array_equal(value, other, err_msg=key)
        else:
            assert value.tolist() == other.tolist(), key


# The classifier's ten model fits take seconds even on tiny inputs: one run is enough there,
# its determinism is tested in tests/pp/test_doublets.py.
SINGLE_RUN = {"doublets"}


@pytest.mark.parametrize(("name", "run", "tasks"), METHODS, ids=[m[0] for m in METHODS])
def test_method_reports_progress_and_results_do_not_change(
    name, run, tasks, caplog, small_pln_table
):
    plain = None if name in SINGLE_RUN else run()
    caplog.set_level(logging.INFO, logger="spatiome")
    recorder = Recorder()
    with listen(recorder):
        reported = run()
    if plain is not None:
        _assert_same(plain, reported)

    seen = recorder.by_task()
    assert list(seen) == [task for task, _, _ in tasks]
    messages = _messages(caplog)
    for task, unit, total in tasks:
        updates = seen[task]
        done = [d for d, _, _ in updates]
        totals = {t for _, t, _ in updates}
        assert len(totals) == 1 and {u for _, _, u in updates} == {unit}
        (expected,) = totals
        assert total is None or expected == total
        assert done[0] == 0 and done[-1] == expected and expected > 0
        assert all(b > a for a, b in zip(done, done[1:], strict=False)), done
        assert f"{task}: {expected} {unit}s to go" in messages
        assert any(m.startswith(f"{task}: done, {expected} {unit}s in ") for m in messages)


def test_every_epoch_carries_the_loss():
    pytest.importorskip("torch")
    recorder = Recorder()
    with listen(recorder):
        result = _run_gnn("reconstruction")()
    details = [e[4] for e in recorder.events if e[0] == "domains.gnn"][1:]
    assert details == [f"loss {value:.4g}" for value in result["loss"]]


def test_rctd_sigma_rounds_stop_at_convergence(small_pln_table):
    """Rounds left when sigma has converged are counted done, as the estimate is final."""
    recorder = Recorder()
    with listen(recorder):
        _run_deconv(method="rctd")()
    sigma = [e for e in recorder.events if e[0] == "deconv.rctd sigma"]
    assert sigma[-1][1:3] == (4, 4)
    assert sigma[1][1] == 1 and sigma[1][4].startswith("sigma ")


def test_doublet_mode_counts_every_candidate_fit(small_pln_table):
    recorder = Recorder()
    spots, signatures = _deconv_data()
    with listen(recorder):
        sm.deconv.deconvolve(spots, signatures, method="rctd", mode="doublet")
    total = recorder.by_task()["deconv.rctd doublet mode"][-1][1]
    # each spot is fitted to each of its candidate types and each pair of them
    assert spots.n_obs <= total <= spots.n_obs * (3 + 3)


def test_nnls_progress_per_chunk():
    from spatiome.deconv.deconvolve import _Inputs, _nnls

    spots, signatures = _deconv_data(n_spots=25)
    inputs = _Inputs(sp.csr_matrix(spots.X, dtype=np.float64), signatures.to_numpy(),
                     ["a", "b", "c"], spots.var_names, np.arange(25))  # fmt: skip
    recorder = Recorder()
    with listen(recorder), Progress("deconv.nnls", 25, "spot") as progress:
        chunked = _nnls(inputs, chunk=10, progress=progress)
    assert [e[1] for e in recorder.events] == [0, 10, 20, 25]
    np.testing.assert_array_equal(chunked, _nnls(inputs))
