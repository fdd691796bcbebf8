"""Linear probe: multinomial logistic regression on frozen, L2-normalised image features.

The CLIP paper's protocol (Radford et al. 2021, appendix A.3): L-BFGS logistic regression, its inverse
regularisation strength C chosen on a validation split. Here C comes from a small grid: each value is fitted on
the train split and scored on the validation split; the most regularised C among those with the best
validation top-1 wins; the probe is refitted with it on train + validation and scored on the test split.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from collections.abc import Sequence

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from evaluation.metrics import classification, l2_normalise

MAX_ITER = 1000


@dataclass(frozen=True)
class ProbeResult:
    C: float
    """The C chosen on the validation split."""
    val_top1: dict[float, float]
    """Validation top-1 of each C of the grid (fitted on the train split)."""
    test: dict[str, float]
    """top1, top5 (more than 5 classes), mean_per_class_recall on the test split, refitted on train + validation."""


def _fit(x: np.ndarray, y: np.ndarray, C: float) -> LogisticRegression:
    # One BLAS thread: the fits are small (features of a few hundred images), so more threads only contend
    # with the other evaluation tasks sharing the machine's cores.
    with warnings.catch_warnings(), threadpool_limits(limits=1):
        # Large C on separable features runs out of iterations while the decision is long settled; the
        # validation split, not the optimiser's tolerance, decides whether that C is any good.
        warnings.simplefilter("ignore", ConvergenceWarning)
        return LogisticRegression(C=C, max_iter=MAX_ITER).fit(x, y)


def _scores(model: LogisticRegression, x: np.ndarray) -> np.ndarray:
    """(n, classes seen in fitting) decision values, columns in model.classes_ order."""
    dec = model.decision_function(x)
    return np.stack([np.zeros_like(dec), dec], axis=1) if dec.ndim == 1 else dec  # binary: one column, for classes_[1]


def linear_probe(train_x: np.ndarray, train_y: Sequence[int], val_x: np.ndarray, val_y: Sequence[int],
                 test_x: np.ndarray, test_y: Sequence[int], grid: Sequence[float]) -> ProbeResult:
    train_x, val_x, test_x = (l2_normalise(x) for x in (train_x, val_x, test_x))
    train_y, val_y, test_y = (np.asarray(y, dtype=np.int64) for y in (train_y, val_y, test_y))
    if len(np.unique(train_y)) < 2:
        raise ValueError("linear probe: the train split needs at least two classes")
    if not grid or min(grid) <= 0:
        raise ValueError(f"linear probe: the C grid must be non-empty and positive, got {list(grid)}")
    val_top1 = {float(C): float(np.mean(_fit(train_x, train_y, C).predict(val_x) == val_y)) for C in sorted(grid)}
    best = max(val_top1.values())
    C = min(c for c, v in val_top1.items() if v == best)
    model = _fit(np.concatenate([train_x, val_x]), np.concatenate([train_y, val_y]), C)
    column = {int(c): i for i, c in enumerate(model.classes_)}
    unseen = sorted(set(test_y.tolist()) - set(column))
    if unseen:
        raise ValueError(f"linear probe: test classes {unseen} have no train or validation images")
    test = classification(_scores(model, test_x), [column[int(y)] for y in test_y])
    return ProbeResult(C=C, val_top1=val_top1, test=test)
