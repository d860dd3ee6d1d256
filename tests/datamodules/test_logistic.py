"""The probes' logistic regression chooses its strength on the train side."""

import numpy as np
from sklearn.metrics import roc_auc_score

from maskstudy.datamodules.logistic import C_GRID, UNCHOSEN_C, chosen_c, logistic_scores


def noise_columns(seed: int):
    """600 users: five columns that shift a little with the label, 150 of pure noise."""
    rng = np.random.default_rng(seed)
    y = (rng.random(600) < 0.3).astype(int)
    x = rng.normal(size=(600, 155))
    x[:, :5] += 0.5 * y[:, None]
    return x, y, rng.random(600) < 0.3


def shared_nuisance(seed: int):
    """600 users: the label shows only in the difference of two columns that share a large
    nuisance; the mean difference between the classes (what a strongly regularised fit
    follows) points along the first column and misses it."""
    rng = np.random.default_rng(seed)
    y = (rng.random(600) < 0.3).astype(int)
    z = 3 * rng.normal(size=600)
    x = np.stack([0.5 * y + z + 0.3 * rng.normal(size=600), z + 0.3 * rng.normal(size=600)], 1)
    return x, y, rng.random(600) < 0.3


def test_noise_columns_get_a_stronger_regularisation_than_a_fixed_one():
    """Where most columns are noise, sklearn's C = 1 fits the noise: the chosen strength is
    mostly far stronger and reads the test users better on average over six draws."""
    gains, chosen = [], []
    for seed in range(6):
        x, y, test = noise_columns(seed)
        scores, c = logistic_scores(x, y, test, standardise=True)
        fixed, one = logistic_scores(x, y, test, c=1.0, standardise=True)
        assert one == 1.0 and c in C_GRID
        chosen.append(c)
        gains.append(roc_auc_score(y[test], scores) - roc_auc_score(y[test], fixed))
    assert np.median(chosen) <= 0.03
    assert np.mean(gains) > 0.01, gains


def test_a_label_hidden_behind_a_nuisance_gets_a_weak_regularisation():
    """Where the label needs the fit to cancel a shared nuisance, the choice goes the other
    way: C of 1 or more, far above the strongest regularisation's test AUC."""
    for seed in range(6):
        x, y, test = shared_nuisance(seed)
        scores, c = logistic_scores(x, y, test, standardise=True)
        strongest, _ = logistic_scores(x, y, test, c=C_GRID[0], standardise=True)
        assert c >= 1.0, seed
        assert roc_auc_score(y[test], scores) > roc_auc_score(y[test], strongest) + 0.1, seed


def test_the_choice_is_deterministic_and_needs_two_users_of_each_class():
    x, y, test = noise_columns(0)
    assert chosen_c(x, y) == chosen_c(x.copy(), y.copy())
    one_positive = np.zeros(40, dtype=int)
    one_positive[3] = 1
    assert chosen_c(np.random.default_rng(0).normal(size=(40, 3)), one_positive) == UNCHOSEN_C
    # a side without a class: nothing to fit or score
    assert logistic_scores(x, np.zeros_like(y), test) is None
