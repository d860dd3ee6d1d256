"""The probes' classifier: an L2 logistic regression whose strength is chosen on the train side.

Every probe of the framework (the embeddings' linear probe, the bag-of-events rows, the
latents' row) fits one of these per task. Its inverse strength ``C`` decides how much of a
representation's variation the fit may use, and the best value differs by representation:
a fixed ``C`` under-regularises some and so reads them lower than they are
(docs/learning.md, "The probe's strength"). Unless a value is given, ``C`` is chosen per fit:

    C* = argmax over C in C_GRID of  mean over k folds of AUC(fold's validation side)

with ``k = min(FOLDS, users of the rarer class on the train side)`` stratified folds of the
train side (in order, unshuffled: the choice is deterministic), each fold's fits
warm-started along the grid from the strongest regularisation; the model refitted on the
whole train side at ``C*`` scores the test side. Ties go to the stronger regularisation.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler

# Half-decades from 1e-4 to 10, strongest regularisation first.
C_GRID = tuple(float(c) for c in np.logspace(-4, 1, 11))
FOLDS = 5
# With a single user of a class on the train side there is nothing to cross-validate.
UNCHOSEN_C = 1.0
MAX_ITER = 2000
# Up to this many columns the grid's fits take Newton steps on the d x d Hessian, a few
# iterations a fit and about twice as fast as lbfgs (embeddings, the world's bag of events);
# wider inputs (MovieLens' bag of items: a column per movie) take lbfgs, as the probe itself
# always does, so a fixed C gives the scores it always gave.
NEWTON_MAX_COLUMNS = 512


def chosen_c(x, y: np.ndarray, *, grid: tuple[float, ...] = C_GRID, folds: int = FOLDS) -> float:
    """``C*`` of the module docstring for the training users ``x`` with labels ``y``."""
    counts = np.unique(y, return_counts=True)[1]
    k = min(folds, int(counts.min())) if len(counts) == 2 else 0
    if k < 2:
        return UNCHOSEN_C
    solver = "newton-cholesky" if x.shape[1] <= NEWTON_MAX_COLUMNS else "lbfgs"
    auc = np.zeros(len(grid))
    for fit, val in StratifiedKFold(k).split(np.zeros(len(y)), y):
        clf = LogisticRegression(max_iter=MAX_ITER, warm_start=True, solver=solver)
        for j, c in enumerate(grid):
            clf.set_params(C=c).fit(x[fit], y[fit])
            auc[j] += roc_auc_score(y[val], clf.decision_function(x[val]))
    return grid[int(np.argmax(auc))]


def logistic_scores(x, y: np.ndarray, test: np.ndarray, *, c: float | None = None,
                    standardise: bool = False) -> tuple[np.ndarray, float] | None:
    """(test-side probabilities, the ``C`` they were fitted at) of a logistic regression fitted
    on the train side (``~test``) at ``c`` (None: :func:`chosen_c`); ``standardise``: each
    column scaled to the train side's mean and standard deviation first. None when either side
    lacks a class."""
    train = ~test
    if len(np.unique(y[train])) < 2 or len(np.unique(y[test])) < 2:
        return None
    if standardise:
        x = StandardScaler().fit(x[train]).transform(x)
    strength = chosen_c(x[train], y[train]) if c is None else c
    clf = LogisticRegression(C=strength, max_iter=MAX_ITER).fit(x[train], y[train])
    return clf.predict_proba(x[test])[:, 1], strength
