"""Spot-level classifiers and regressors, validated with spatially blocked folds."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from sklearn.base import clone
from sklearn.decomposition import TruncatedSVD
from sklearn.ensemble import (
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.feature_selection import f_classif, f_regression
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    f1_score,
    mean_absolute_error,
    mean_squared_error,
    r2_score,
    recall_score,
)
from sklearn.model_selection import KFold, StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, SVR

from .._core.validate import (
    SpatiomeInputError,
    check_adata,
    get_matrix,
    resolve_counts_layer,
)
from .folds import spatial_folds

MODELS = ("random_forest", "svm", "gradient_boosting")
# Up to this many genes are modelled directly; more are reduced by a truncated SVD.
_MAX_UNREDUCED = 50
SCHEMES = ("blocked", "random")


@dataclass
class CrossValidation:
    """Scores of one model under spatially blocked and random k-fold cross-validation.

    Returned by :func:`classify` and :func:`regress` (see their examples).

    Attributes
    ----------
    scores
        One row per scheme and fold with the metrics.
    summary
        Mean of each metric per scheme, and the gap (random minus blocked): the part of
        the random-fold score that comes from neighbours leaking into the training set.
    importance
        Permutation importance on the blocked folds' held-out spots: genes (or features)
        x classes (drop in recall) for classifiers, one column (rise in MSE) for
        regressors.
    predictions
        Out-of-fold predictions of the blocked scheme, per spot.
    model
        The model refitted on every spot.
    """

    scores: pd.DataFrame
    summary: pd.DataFrame
    importance: pd.DataFrame
    predictions: pd.Series
    model: object = field(repr=False)


def classify(
    adata: AnnData,
    label_key: str,
    *,
    model: str = "random_forest",
    features: str | Sequence[str] = "genes",
    n_genes: int = 2000,
    n_folds: int = 5,
    n_importance: int = 30,
    sample_key: str | None = None,
    key_added: str | None = None,
    random_state: int = 0,
) -> CrossValidation:
    """Predict a spot label; report blocked and random cross-validation side by side.

    Features (``features``): ``"genes"`` uses the log-normalized expression of the
    ``n_genes`` most variable genes (from ``layers["counts"]`` when present), reduced
    inside each training fold (scaling and a 30-component truncated SVD are part of the
    fitted model, so nothing is learnt from the test spots); a key of ``obsm`` uses that
    embedding; a list of genes uses those genes. Models: ``"random_forest"`` (200 trees),
    ``"svm"`` (RBF kernel on standardized components), ``"gradient_boosting"``
    (histogram gradient boosting).

    Spatially blocked folds (:func:`spatial_folds`) are contiguous tissue blocks; random
    folds are stratified k-fold. The random score is higher whenever a spot's neighbours,
    which resemble it, sit in the training set: that gap is what a random split would
    wrongly report as accuracy. Permutation importance (drop in each class's recall when
    one feature is shuffled in the held-out block) is computed for the ``n_importance``
    features most associated with the label (ANOVA F).

    Parameters
    ----------
    adata
        Spots with the label in ``obs[label_key]`` and coordinates in ``obsm["spatial"]``.
    label_key
        Column with the classes (spots with a missing label are left out).
    model
        ``"random_forest"``, ``"svm"`` or ``"gradient_boosting"``.
    features
        ``"genes"``, an ``obsm`` key, or a list of genes.
    n_genes
        Highly variable genes used with ``features="genes"``.
    n_folds
        Folds of each scheme.
    n_importance
        Features whose permutation importance is computed (0 skips it).
    sample_key
        With several samples, blocks never span two samples.
    key_added
        ``obs`` column receiving the blocked out-of-fold predictions (default
        ``f"{label_key}_cv"``); the summary goes to ``uns["spatiome"][key_added]``.
    random_state
        Seed of the folds and the model.

    Returns
    -------
    CrossValidation

    Examples
    --------
    >>> import spatiome as sm
    >>> tissue = sm.datasets.simulate_tissue(n_spots=600, n_genes=60, patterns=("domain",),
    ...                                      frac_spatial=0.5, effect_size=1.5, random_state=0)
    >>> result = classify(tissue, "domain", n_folds=3, n_importance=5)
    >>> sorted(result.summary.index)
    ['blocked', 'gap', 'random']
    >>> bool(result.summary.loc["random", "accuracy"] >= result.summary.loc["blocked", "accuracy"])
    True
    """
    return _cross_validate(
        adata,
        label_key,
        True,
        model,
        features,
        n_genes,
        n_folds,
        n_importance,
        sample_key,
        key_added,
        random_state,
    )


def regress(
    adata: AnnData,
    target: str,
    *,
    model: str = "random_forest",
    features: str | Sequence[str] = "genes",
    n_genes: int = 2000,
    n_folds: int = 5,
    n_importance: int = 30,
    sample_key: str | None = None,
    key_added: str | None = None,
    random_state: int = 0,
) -> CrossValidation:
    """Predict a numeric spot value (``obs[target]``); blocked and random CV side by side.

    The same features, models and folds as :func:`classify`; metrics are R^2, RMSE and
    MAE, and permutation importance is the rise in held-out MSE.

    Examples
    --------
    >>> import spatiome as sm
    >>> tissue = sm.datasets.simulate_tissue(n_spots=500, n_genes=50, random_state=1)
    >>> tissue.obs["depth"] = tissue.obsm["spatial"][:, 0]
    >>> result = regress(tissue, "depth", model="svm", n_folds=3, n_importance=0)
    >>> list(result.summary.columns)
    ['r2', 'rmse', 'mae']
    """
    return _cross_validate(
        adata,
        target,
        False,
        model,
        features,
        n_genes,
        n_folds,
        n_importance,
        sample_key,
        key_added,
        random_state,
    )


def _cross_validate(
    adata,
    key,
    is_classifier,
    model,
    features,
    n_genes,
    n_folds,
    n_importance,
    sample_key,
    key_added,
    random_state,
) -> CrossValidation:
    check_adata(adata)
    if model not in MODELS:
        raise SpatiomeInputError(f"model must be one of {MODELS}, got {model!r}")
    y, keep = _target(adata, key, is_classifier)
    data = adata[keep]
    x, names, reduce = feature_matrix(data, features, n_genes)
    estimator = _estimator(model, is_classifier, reduce, x.shape[1], random_state)
    folds = {
        "blocked": spatial_folds(data, n_folds, sample_key=sample_key, random_state=random_state),
        "random": _random_folds(y, n_folds, is_classifier, random_state),
    }
    rows, predictions = [], {}
    for scheme, fold in folds.items():
        predicted = np.empty(len(y), dtype=y.dtype)
        for k in range(n_folds):
            test = fold == k
            fitted = clone(estimator).fit(x[~test], y[~test])
            predicted[test] = fitted.predict(x[test])
            rows.append(
                {
                    "scheme": scheme,
                    "fold": k,
                    "n_test": int(test.sum()),
                    **_metrics(y[test], predicted[test], is_classifier),
                }
            )
        predictions[scheme] = predicted
    scores = pd.DataFrame(rows)
    summary = scores.drop(columns=["fold", "n_test"]).groupby("scheme").mean()
    summary.loc["gap"] = summary.loc["random"] - summary.loc["blocked"]
    importance = _importance(
        estimator, x, y, names, folds["blocked"], n_folds, n_importance, is_classifier, random_state
    )
    final = clone(estimator).fit(x, y)
    oof = pd.Series(predictions["blocked"], index=data.obs_names, name=key)
    column = key_added or f"{key}_cv"
    adata.obs[column] = oof.reindex(adata.obs_names)
    if is_classifier:
        adata.obs[column] = pd.Categorical(adata.obs[column])
    adata.uns.setdefault("spatiome", {})[column] = {
        "model": model,
        "features": features if isinstance(features, str) else list(features),
        "n_folds": int(n_folds),
        "summary": summary.round(6).to_dict(orient="index"),
    }
    return CrossValidation(scores, summary, importance, oof, final)


def _target(adata: AnnData, key: str, is_classifier: bool):
    if key not in adata.obs:
        raise SpatiomeInputError(f"adata.obs[{key!r}] is missing: pass the label column")
    values = adata.obs[key]
    keep = values.notna().to_numpy()
    if is_classifier:
        y = values[keep].astype(str).to_numpy()
        if np.unique(y).size < 2:
            raise SpatiomeInputError(f"adata.obs[{key!r}] needs at least 2 classes")
    else:
        try:
            y = values[keep].to_numpy(dtype=np.float64)
        except (TypeError, ValueError):
            raise SpatiomeInputError(f"adata.obs[{key!r}] must be numeric for regress") from None
    if keep.sum() < 20:
        raise SpatiomeInputError(f"only {int(keep.sum())} spots have a value in obs[{key!r}]")
    return y, keep


def feature_matrix(adata: AnnData, features, n_genes: int):
    """(matrix, feature names, whether the model should reduce it) for the chosen features.

    Examples
    --------
    >>> import spatiome as sm
    >>> tissue = sm.datasets.simulate_tissue(n_spots=100, n_genes=80, random_state=0)
    >>> x, names, reduce = feature_matrix(tissue, "genes", n_genes=60)
    >>> x.shape, len(names), reduce
    ((100, 60), 60, True)
    """
    if isinstance(features, str) and features != "genes":
        if features not in adata.obsm:
            raise SpatiomeInputError(
                f"features={features!r} is neither 'genes' nor a key of adata.obsm "
                f"({list(adata.obsm.keys())})"
            )
        x = np.asarray(adata.obsm[features], dtype=np.float64)
        return x, [f"{features}_{i}" for i in range(x.shape[1])], False
    log = log_expression(adata)
    if isinstance(features, str):
        genes = _variable_genes(log, n_genes)
    else:
        genes = adata.var_names.get_indexer(list(features))
        if (genes < 0).any():
            missing = [g for g, i in zip(features, genes, strict=True) if i < 0][:5]
            raise SpatiomeInputError(f"genes not in adata.var_names: {missing}")
    x = log[:, genes]
    reduce = x.shape[1] > _MAX_UNREDUCED
    # a few genes are given to the model as they are: dense (spots x at most 50 values), so
    # that every model, the SVM's standardization included, accepts them
    return (x if reduce else x.toarray()), list(adata.var_names[genes]), reduce


def log_expression(adata: AnnData) -> sp.csr_matrix:
    """log1p of counts scaled to 10,000 per spot (CSR), from ``layers['counts']`` or X.

    X is used only when it holds counts; otherwise the error says where to put them.

    Examples
    --------
    >>> import numpy as np, anndata, scipy.sparse as sp
    >>> adata = anndata.AnnData(sp.csr_matrix(np.array([[1.0, 3.0], [0.0, 2.0]])))
    >>> np.round(log_expression(adata).toarray(), 3)
    array([[7.824, 8.923],
           [0.   , 9.21 ]])
    """
    counts = get_matrix(adata, resolve_counts_layer(adata))
    counts = sp.csr_matrix(counts, dtype=np.float64)
    totals = np.asarray(counts.sum(axis=1)).ravel()
    scaled = sp.diags(1e4 / np.maximum(totals, 1.0)) @ counts
    scaled.data = np.log1p(scaled.data)
    return scaled.tocsr()


def _variable_genes(log: sp.csr_matrix, n_genes: int) -> np.ndarray:
    mean = np.asarray(log.mean(axis=0)).ravel()
    var = np.asarray(log.multiply(log).mean(axis=0)).ravel() - mean**2
    dispersion = var / np.maximum(mean, 1e-12)
    return np.sort(np.argsort(-dispersion)[: min(n_genes, log.shape[1])])


def _estimator(model: str, is_classifier: bool, reduce: bool, n_features: int, seed: int):
    if model == "random_forest":
        head = (RandomForestClassifier if is_classifier else RandomForestRegressor)(
            n_estimators=200, random_state=seed, n_jobs=1
        )
    elif model == "svm":
        head = SVC(random_state=seed) if is_classifier else SVR()
    else:
        head = (HistGradientBoostingClassifier if is_classifier else HistGradientBoostingRegressor)(
            random_state=seed
        )
    steps = []
    if reduce:
        steps += [
            ("scale", StandardScaler(with_mean=False)),
            ("svd", TruncatedSVD(n_components=min(30, n_features - 1), random_state=seed)),
        ]
    if model == "svm":
        steps.append(("standardize", StandardScaler()))
    steps.append(("model", head))
    return Pipeline(steps)


def _random_folds(y, n_folds, is_classifier, seed) -> np.ndarray:
    splitter = (StratifiedKFold if is_classifier else KFold)(
        n_folds, shuffle=True, random_state=seed
    )
    fold = np.empty(len(y), dtype=np.int64)
    for k, (_, test) in enumerate(splitter.split(np.zeros(len(y)), y)):
        fold[test] = k
    return fold


def _metrics(truth, predicted, is_classifier: bool) -> dict[str, float]:
    if is_classifier:
        with warnings.catch_warnings():
            # A tissue block often lacks some classes: predicting them there is an error
            # that the scores count, not something to warn about once per fold.
            warnings.filterwarnings("ignore", "y_pred contains classes not in y_true")
            balanced = balanced_accuracy_score(truth, predicted)
        return {
            "accuracy": accuracy_score(truth, predicted),
            "balanced_accuracy": balanced,
            "macro_f1": f1_score(truth, predicted, average="macro", zero_division=0),
        }
    return {
        "r2": r2_score(truth, predicted),
        "rmse": float(np.sqrt(mean_squared_error(truth, predicted))),
        "mae": mean_absolute_error(truth, predicted),
    }


def _importance(estimator, x, y, names, fold, n_folds, n_importance, is_classifier, seed):
    if n_importance <= 0:
        return pd.DataFrame(index=pd.Index([], name="feature"))
    dense_score = (f_classif if is_classifier else f_regression)(x, y)[0]
    candidates = np.argsort(-np.nan_to_num(dense_score, nan=-np.inf))[:n_importance]
    classes = np.unique(y) if is_classifier else ["mse_increase"]
    total = np.zeros((candidates.size, len(classes)))
    rng = np.random.default_rng(seed)
    for k in range(n_folds):
        test = fold == k
        fitted = clone(estimator).fit(x[~test], y[~test])
        x_test = x[test].toarray() if sp.issparse(x) else x[test].copy()
        base = _per_class(y[test], fitted.predict(x_test), classes, is_classifier)
        for row, j in enumerate(candidates):
            saved = x_test[:, j].copy()
            x_test[:, j] = rng.permutation(saved)
            total[row] += base - _per_class(y[test], fitted.predict(x_test), classes, is_classifier)
            x_test[:, j] = saved
    table = pd.DataFrame(
        total / n_folds,
        index=pd.Index(np.asarray(names)[candidates], name="feature"),
        columns=classes,
    )
    return table.sort_values(list(table.columns)[0], ascending=False)


def _per_class(truth, predicted, classes, is_classifier: bool) -> np.ndarray:
    if is_classifier:
        return recall_score(truth, predicted, labels=classes, average=None, zero_division=0)
    # negative MSE, so that "score without shuffling minus score with" is the rise in MSE
    return np.array([-mean_squared_error(truth, predicted)])
