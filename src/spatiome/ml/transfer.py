"""Labels from one section to another, and what that costs in accuracy."""

from __future__ import annotations

import pandas as pd
from anndata import AnnData
from sklearn.base import clone

from .._core.validate import SpatiomeInputError, check_adata
from .models import MODELS, _estimator, _metrics, _target, _variable_genes, classify, log_expression


def transfer_labels(
    source: AnnData,
    target: AnnData,
    label_key: str,
    *,
    model: str = "random_forest",
    n_genes: int = 2000,
    key_added: str | None = None,
    random_state: int = 0,
) -> pd.Series:
    """Train on an annotated section and label the spots of another.

    Both sections are log-normalized the same way; the features are the source's most
    variable genes that the target also has. The model (as in :func:`classify`) is fitted
    on every labelled source spot.

    Returns
    -------
    pandas.Series
        Predicted label per target spot; also ``target.obs[key_added]`` (default
        ``label_key``), the class probabilities in ``target.obsm[f"{key_added}_proba"]``
        (models that give them) and their maximum in ``obs[f"{key_added}_confidence"]``.

    Examples
    --------
    >>> import spatiome as sm
    >>> import numpy as np
    >>> tissue = sm.datasets.simulate_tissue(n_spots=900, n_genes=60, patterns=("domain",),
    ...                                      frac_spatial=0.5, effect_size=1.5, random_state=0)
    >>> half = np.random.default_rng(0).random(tissue.n_obs) < 0.5
    >>> source, target = tissue[half].copy(), tissue[~half].copy()
    >>> labels = transfer_labels(source, target, "domain", key_added="predicted")
    >>> bool((labels == target.obs["domain"].astype(str)).mean() > 0.8)
    True
    """
    check_adata(source, name="source")
    check_adata(target, name="target")
    if model not in MODELS:
        raise SpatiomeInputError(f"model must be one of {MODELS}, got {model!r}")
    y, keep = _target(source, label_key, True)
    shared = source.var_names.intersection(target.var_names, sort=False)
    if len(shared) < 10:
        raise SpatiomeInputError(
            f"source and target share {len(shared)} genes: use the same gene identifiers"
        )
    source_log = log_expression(source)[:, source.var_names.get_indexer(shared)]
    target_log = log_expression(target)[:, target.var_names.get_indexer(shared)]
    genes = _variable_genes(source_log[keep], n_genes)
    estimator = _estimator(model, True, genes.size > 50, genes.size, random_state)
    fitted = clone(estimator).fit(source_log[keep][:, genes], y)
    x = target_log[:, genes]
    predicted = pd.Series(fitted.predict(x), index=target.obs_names, name=label_key)
    key = key_added or label_key
    target.obs[key] = pd.Categorical(predicted)
    if hasattr(fitted, "predict_proba"):
        proba = pd.DataFrame(
            fitted.predict_proba(x),
            index=target.obs_names,
            columns=[str(c) for c in fitted.classes_],
        )
        target.obsm[f"{key}_proba"] = proba
        target.obs[f"{key}_confidence"] = proba.max(axis=1).to_numpy()
    return predicted


def cross_sample_validate(
    adata: AnnData,
    label_key: str,
    sample_key: str = "sample",
    *,
    model: str = "random_forest",
    n_genes: int = 2000,
    n_folds: int = 5,
    random_state: int = 0,
) -> pd.DataFrame:
    """Train on each sample and test on every other; compare with within-sample CV.

    For each training sample, the within-sample score is its spatially blocked
    cross-validation (:func:`classify`); each other sample is then labelled by
    :func:`transfer_labels` from the training sample. ``drop`` is the within-sample
    accuracy minus the cross-sample accuracy: what generalizing to a new section costs.

    Returns
    -------
    pandas.DataFrame
        One row per (train, test) pair: ``accuracy``, ``balanced_accuracy``,
        ``macro_f1``, ``within_accuracy`` and ``drop``.

    Examples
    --------
    >>> import spatiome as sm
    >>> a = sm.datasets.simulate_tissue(n_spots=400, n_genes=60, random_state=0)
    >>> b = sm.datasets.simulate_tissue(n_spots=400, n_genes=60, random_state=0)
    >>> both = sm.integrate.concat_samples({"a": a, "b": b})
    >>> table = cross_sample_validate(both, "domain", n_folds=3)
    >>> table[["train", "test"]].values.tolist()
    [['a', 'b'], ['b', 'a']]
    """
    check_adata(adata)
    if sample_key not in adata.obs:
        raise SpatiomeInputError(f"adata.obs[{sample_key!r}] is missing")
    samples = list(pd.Categorical(adata.obs[sample_key].astype(str)).categories)
    if len(samples) < 2:
        raise SpatiomeInputError(f"adata.obs[{sample_key!r}] needs at least 2 samples")
    parts = {s: adata[(adata.obs[sample_key].astype(str) == s).to_numpy()].copy() for s in samples}
    rows = []
    for train in samples:
        within = classify(
            parts[train],
            label_key,
            model=model,
            n_genes=n_genes,
            n_folds=n_folds,
            n_importance=0,
            random_state=random_state,
        )
        within_accuracy = float(within.summary.loc["blocked", "accuracy"])
        for test in samples:
            if test == train:
                continue
            predicted = transfer_labels(
                parts[train],
                parts[test],
                label_key,
                model=model,
                n_genes=n_genes,
                key_added="_transferred",
                random_state=random_state,
            )
            truth, keep = _target(parts[test], label_key, True)
            scores = _metrics(truth, predicted.to_numpy()[keep].astype(str), True)
            rows.append(
                {
                    "train": train,
                    "test": test,
                    **scores,
                    "within_accuracy": within_accuracy,
                    "drop": within_accuracy - scores["accuracy"],
                }
            )
    return pd.DataFrame(rows)


__all__ = ["cross_sample_validate", "transfer_labels"]
