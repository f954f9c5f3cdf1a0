"""Pure maths on tensors: the quantities subscribers publish, tested on their own."""

from ikkuna_tune.functional.accuracy import (
    accuracy,
    class_counts,
    correct,
    count_correct,
    count_predictions,
    predictions,
)
from ikkuna_tune.functional.cca import cca
from ikkuna_tune.functional.stats import (
    histogram,
    largest_singular_value,
    mean,
    norm,
    norm_ratio,
    norms,
    projection_ratio,
    spectral_norm,
    stacked,
    variance,
)
from ikkuna_tune.functional.svcca import svcca_similarity

__all__ = [
    "accuracy",
    "cca",
    "class_counts",
    "correct",
    "count_correct",
    "count_predictions",
    "histogram",
    "largest_singular_value",
    "mean",
    "norm",
    "norm_ratio",
    "norms",
    "predictions",
    "projection_ratio",
    "spectral_norm",
    "stacked",
    "svcca_similarity",
    "variance",
]
