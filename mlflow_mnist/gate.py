"""The promotion gate's pure half: the statistics and the rule, on arrays the caller hands in.

Nothing here reads the tracking store, loads a model or knows a task: :mod:`mlflow_mnist.registry` passes the
test labels, each model's predicted labels on the same test examples and the training examples, and gets back a
decision with the line users read. The rule (README, "Promotion"):

- the candidate's accuracy, *as its model predicts it now*, must equal the one its final logged (any differing
  count of errors: tampered, or not the measured model) and reach ``min_accuracy`` (``--force`` never lowers it);
- no test example may also be a training example (compared byte for byte);
- with a champion on the same test set, both predict the same examples and McNemar's exact test looks at the
  examples exactly one of them gets right: the alias moves only when the candidate is **better beyond the test
  set's noise** (more such examples in its favour, two-sided p < ``alpha``). Within noise, or worse, the champion
  stays unless ``--force``;
- a champion that cannot be compared (its tags missing or not describing its model) is replaced only with
  ``--force``.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

ALPHA = 0.05  # two-sided level of McNemar's test: the candidate must be better beyond noise at this level
BETTER, WORSE, NOISE = "better", "worse", "noise"
VERDICT_WORDS = {
    BETTER: "better beyond the test set's noise",
    WORSE: "worse beyond the test set's noise",
    NOISE: "within the test set's noise",
}


class PromotionRejected(RuntimeError):
    """The gate said no; the alias stays where it was."""


class PromoteInputError(ValueError):
    """A value the user gave cannot be used (a threshold, a run id); nothing was read or written past it. Not a
    :class:`PromotionRejected`: ``except PromotionRejected`` (the gate said no) caught a misspelt ``model`` too."""


def check_min_accuracy(value: float) -> float:
    """``value`` as a float when it is a usable threshold: finite, above 0, at most 1."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or not 0 < number <= 1:
        raise PromoteInputError(
            f"--min-accuracy {value} is not a share of test examples: give a number above 0 and at most 1, e.g. 0.995"
        )
    return number


def standard_error(accuracy: float, n_test: int | None) -> float:
    """Binomial standard error of an accuracy measured on ``n_test`` examples (2,060 at 99.66%: 0.13 points)."""
    if not n_test or not math.isfinite(accuracy):
        return math.nan
    return math.sqrt(accuracy * (1 - accuracy) / n_test)


def show_accuracy(accuracy: float, n_test: int | None) -> str:
    """``99.6602% (+/-0.13 points on 2060 test images)``: an accuracy with its standard error."""
    se = standard_error(accuracy, n_test)
    return f"{accuracy:.4%}" + (f" (+/-{100 * se:.2f} points on {n_test} test examples)" if se == se else "")


def shared_examples(train: np.ndarray, test: np.ndarray) -> int:
    """How many test examples also appear among the training examples, byte for byte.

    Each example's bytes (of the arrays as given: same dtype for both) are hashed, so a copy of a test image
    inside the training set is found whatever file it came from and wherever it sits.
    """
    if len(train) == 0 or len(test) == 0:
        return 0

    def hashes(examples: np.ndarray):
        rows = np.ascontiguousarray(examples).reshape(len(examples), -1)
        return [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in rows]

    seen = set(hashes(train))
    return sum(digest in seen for digest in hashes(test))


def logged_errors(accuracy: float, n_test: int) -> int | None:
    """The error count a logged accuracy stands for on ``n_test`` examples; None when it is no such count."""
    if not math.isfinite(accuracy) or n_test <= 0:
        return None
    errors = round((1 - accuracy) * n_test)
    # A count over n differs from its neighbours by 1/n; anything further than float round-off is no count.
    return errors if abs((1 - errors / n_test) - accuracy) < 1e-9 else None


def mcnemar_exact_p(candidate_only: int, champion_only: int) -> float:
    """Two-sided exact McNemar p-value: the binomial test of ``candidate_only`` successes in the discordant
    examples at probability 1/2 (1.0 when the two models never disagree)."""
    discordant = candidate_only + champion_only
    if discordant == 0:
        return 1.0
    from scipy.stats import binomtest

    return float(binomtest(candidate_only, discordant, 0.5, alternative="two-sided").pvalue)


@dataclass(frozen=True)
class Paired:
    """Two models scored on the same test examples.

    ``candidate_only`` (McNemar's b): examples the candidate gets right and the champion wrong;
    ``champion_only`` (c): the reverse. Examples both get right or both wrong say nothing about which is better.
    """

    n: int
    candidate_right: int
    champion_right: int
    candidate_only: int
    champion_only: int
    p_value: float

    def verdict(self, alpha: float = ALPHA) -> str:
        if self.p_value < alpha and self.candidate_only != self.champion_only:
            return BETTER if self.candidate_only > self.champion_only else WORSE
        return NOISE

    def describe(self, alpha: float = ALPHA) -> str:
        """The promote line: each side's count, the discordant counts, the p-value, the verdict."""
        one = "example" if self.candidate_only == 1 else "examples"
        return (
            f"candidate {self.candidate_right:,}/{self.n:,} ({self.candidate_right / self.n:.2%}), "
            f"champion {self.champion_right:,}/{self.n:,} ({self.champion_right / self.n:.2%}): "
            f"candidate right where champion wrong on {self.candidate_only:,} {one}, "
            f"the reverse on {self.champion_only:,}, McNemar exact p = {_p(self.p_value)}: "
            f"{VERDICT_WORDS[self.verdict(alpha)]}"
        )


def _p(value: float) -> str:
    if value >= 0.1:
        return f"{value:.2f}"
    return f"{value:.2g}" if value >= 0.001 else f"{value:.1e}"


def compare_paired(labels: np.ndarray, candidate: np.ndarray, champion: np.ndarray) -> Paired:
    """Both models' predicted labels on the same test examples, paired example by example."""
    labels, candidate, champion = (np.asarray(a).ravel() for a in (labels, candidate, champion))
    if not len(labels) == len(candidate) == len(champion) or not len(labels):
        raise ValueError(
            f"paired comparison needs one prediction per test example from each model: {len(labels)} labels, "
            f"{len(candidate)} and {len(champion)} predictions"
        )
    candidate_ok, champion_ok = candidate == labels, champion == labels
    b = int(np.sum(candidate_ok & ~champion_ok))
    c = int(np.sum(champion_ok & ~candidate_ok))
    return Paired(len(labels), int(candidate_ok.sum()), int(champion_ok.sum()), b, c, mcnemar_exact_p(b, c))


@dataclass(frozen=True)
class Champion:
    """The version ``@champion`` points to, as the gate sees it.

    ``problem`` says why it cannot be compared with ("" when it can); ``predictions`` are its labels for the
    candidate's test examples when it can.
    """

    version: str
    problem: str = ""
    predictions: np.ndarray | None = None


@dataclass(frozen=True)
class Decision:
    accepted: bool
    reason: str
    paired: Paired | None = None
    forced: bool = False


def decide(
    labels: np.ndarray,
    candidate: np.ndarray,
    *,
    min_accuracy: float,
    champion: Champion | None,
    force: bool = False,
    alpha: float = ALPHA,
) -> Decision:
    """Whether the candidate (its predicted ``candidate`` labels for the test ``labels``) replaces ``champion``.

    ``candidate`` must already be verified (its error count equals the one its final logged): this decides,
    it does not check where predictions came from.
    """
    labels, candidate = np.asarray(labels).ravel(), np.asarray(candidate).ravel()
    n = len(labels)
    accuracy = float(np.mean(candidate == labels)) if n else math.nan
    shown = show_accuracy(accuracy, n)
    if not accuracy >= min_accuracy:
        return Decision(False, f"test accuracy {shown} is below --min-accuracy {min_accuracy:.4%}")
    passes = f"test accuracy {shown} passes (threshold {min_accuracy:.4%})"
    if champion is None:
        return Decision(True, f"{passes}; no champion yet")
    if champion.problem:
        if force:
            return Decision(
                True, f"{passes}; replaces version {champion.version} ({champion.problem}), forced", None, True
            )
        return Decision(
            False,
            f"{passes}, but the current champion (version {champion.version}) cannot be compared with: "
            f"{champion.problem}; pass --force to replace it anyway",
        )
    paired = compare_paired(labels, candidate, champion.predictions)
    verdict = paired.verdict(alpha)
    line = paired.describe(alpha)
    if verdict == BETTER:
        return Decision(True, f"{passes}; {line}", paired)
    if force:
        return Decision(True, f"{passes}; {line}; forced past version {champion.version}", paired, True)
    if verdict == WORSE:  # no invitation to force a model shown to be worse in
        return Decision(False, f"{line}; version {champion.version} stays the champion", paired)
    return Decision(
        False,
        f"{line}; a new champion must be better beyond noise (McNemar p < {alpha:g}): pass --force to replace "
        f"version {champion.version} anyway",
        paired,
    )
