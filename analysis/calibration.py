"""Does the test keep its promises? A Monte Carlo check on real cross-validation of real (small) learners.

    python -m analysis.calibration --replicates 2000     # the README's numbers (32 min beside a search)

Two learners see different but equally informative features of the same synthetic two-class data, so their
population accuracies are equal (no effect) or differ by a known amount (``--gap``). Each replicate draws a
fresh data set, runs repeated stratified k-fold CV of both learners on the *same* splits (their fold scores
are correlated as k-fold scores are: overlapping training sets, one data set), and applies the verdict rule
of :mod:`analysis.stats`. Reported: how often the rule says "better" or "worse" (the false-positive rate
under no effect, the power under an effect), next to a plain paired t-test over the same splits.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from analysis.stats import ALPHA, BETTER, WORSE, compare


@dataclass(frozen=True)
class Calibration:
    n_folds: int
    cv_repeats: int
    gap: float  # population accuracy of learner A minus learner B
    replicates: int
    rate: float  # share of replicates where the verdict was better or worse
    naive_rate: float  # the same for a plain paired t-test (two-sided, alpha)

    @property
    def standard_error(self) -> float:
        return math.sqrt(self.rate * (1 - self.rate) / self.replicates)


def _separation(accuracy: float) -> float:
    """Per-feature class separation giving a two-feature Gaussian problem this Bayes accuracy."""
    return 2 * stats.norm.ppf(accuracy)


def _data(rng: np.random.Generator, n: int, separations: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    y = rng.integers(0, 2, n)
    a = rng.normal(size=(n, 2)) + y[:, None] * separations[0] / math.sqrt(2)
    b = rng.normal(size=(n, 2)) + y[:, None] * separations[1] / math.sqrt(2)
    return np.hstack([a, b]), y


def simulate(
    *,
    replicates: int = 1000,
    n_folds: int = 3,
    cv_repeats: int = 1,
    gap: float = 0.0,
    accuracy: float = 0.90,
    n_samples: int = 300,
    rope: float = 0.0,
    alpha: float = ALPHA,
    seed: int = 0,
) -> Calibration:
    """How often the verdict rule calls learner B better or worse than learner A (accuracy ``accuracy``)."""
    from sklearn.model_selection import RepeatedStratifiedKFold
    from sklearn.naive_bayes import GaussianNB

    rng = np.random.default_rng(seed)
    separations = (_separation(accuracy), _separation(accuracy - gap))
    decided = naive = 0
    for replicate in range(replicates):
        x, y = _data(rng, n_samples, separations)
        splitter = RepeatedStratifiedKFold(n_splits=n_folds, n_repeats=cv_repeats, random_state=replicate)
        scores = []
        for train, test in splitter.split(x, y):
            pair = [
                GaussianNB().fit(x[train][:, cols], y[train]).score(x[test][:, cols], y[test])
                for cols in ([0, 1], [2, 3])
            ]
            scores.append(pair)
        a, b = np.array(scores).T
        comparison = compare(b, a, n_folds=n_folds, rope=rope)
        decided += comparison.verdict(comparison.p_value, alpha) in (BETTER, WORSE)
        differences = b - a
        if np.ptp(differences) > 1e-12:
            naive += stats.ttest_rel(b, a).pvalue < alpha
        else:
            naive += bool(differences[0] != 0)
    return Calibration(n_folds, cv_repeats, gap, replicates, decided / replicates, naive / replicates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicates", type=int, default=2000)
    parser.add_argument("--gaps", type=float, nargs="+", default=[0.03, 0.08], help="accuracy gaps for power rows")
    args = parser.parse_args()
    print("| k folds x repeats | true gap (points) | verdict says better/worse | plain paired t-test |")
    print("| --- | ---: | ---: | ---: |")
    for n_folds, repeats in ((3, 1), (3, 3), (10, 1), (5, 5)):
        for gap in (0.0, *args.gaps):
            result = simulate(replicates=args.replicates, n_folds=n_folds, cv_repeats=repeats, gap=gap)
            print(
                f"| {n_folds} x {repeats} | {100 * gap:.1f} | {result.rate:.3f} (+/-{result.standard_error:.3f}) "
                f"| {result.naive_rate:.3f} |"
            )


if __name__ == "__main__":
    main()
