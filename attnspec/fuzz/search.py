"""A hypothesis search for a failing value, with memoized trials and a bounded shrink phase.

Every evaluation (one case on one target, one spec through the front end) goes through
`Search.expect`, keyed by the value it depends on: a trial runs once however often hypothesis replays
it, so replays are consistent (no flaky reports) and the final replay of the smallest failing value is
free. Shrinking stops after `shrink_seconds`: from then on values not yet evaluated count as passing,
so hypothesis reports the smallest failure found so far.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from hypothesis import HealthCheck, Phase, Verbosity, given, reject, settings
from hypothesis import seed as hypothesis_seed
from hypothesis.errors import Unsatisfiable

from .compare import DISCARD, FAIL, OK, Outcome
from .progress import Progress


class Found(Exception):
    """Raised inside the property for a failing value; hypothesis shrinks it, then re-raises it."""

    def __init__(self, value, outcome: Outcome):
        super().__init__(outcome.detail)
        self.value, self.outcome = value, outcome


@dataclass
class Result:
    found: Found | None = None
    trials: int = 0
    discarded: int = 0
    note: str = ""


class Search:
    def __init__(self, progress: Progress, shrink_seconds: float = 60.0):
        self.progress, self.shrink_seconds = progress, shrink_seconds
        self.memo: dict = {}
        self.failed_at: float | None = None
        self.truncated = False

    def expect(self, key, evaluate, value=None, discard: bool = True) -> Outcome:
        """The outcome of evaluate() for key; raises Found for a failure and, with `discard`, rejects
        the drawn value when the outcome says the case lies outside the spec's domain."""
        outcome = self._outcome(key, evaluate)
        if outcome.status == DISCARD and discard:
            reject()
        if outcome.status == FAIL:
            self.failed_at = self.failed_at or time.monotonic()
            self.progress.failed()
            raise Found(key if value is None else value, outcome)
        return outcome

    def _outcome(self, key, evaluate) -> Outcome:
        if key in self.memo:
            return self.memo[key]
        if self.failed_at is not None and time.monotonic() - self.failed_at > self.shrink_seconds:
            self.truncated = True
            return Outcome(OK, "not evaluated: the time for shrinking is up")
        outcome = self.memo[key] = evaluate()
        self.progress.count(outcome.status)
        return outcome

    def run(self, strategies: dict, prop, trials: int, seed: int) -> Result:
        """Run prop(**drawn) on up to `trials` valid values drawn from `strategies`."""
        test = settings(
            max_examples=trials, database=None, deadline=None, derandomize=False,
            phases=(Phase.generate, Phase.shrink), suppress_health_check=list(HealthCheck),
            verbosity=Verbosity.quiet, report_multiple_bugs=False, print_blob=False,
        )(hypothesis_seed(seed)(given(**strategies)(prop)))
        result = Result()
        try:
            test()
        except Found as found:
            result.found = found
        except Unsatisfiable:
            result.note = "almost every drawn case lay outside the spec's domain"
        if self.truncated:
            result.note = f"shrinking stopped after {self.shrink_seconds:g} s"
        result.trials, result.discarded = self.progress.trials, self.progress.discarded
        return result
