"""When to look at a running job next: a request budget spent where the end is likely.

Polling fast wastes requests; polling slowly leaves a finished job's slot idle. Job times
vary (with the length of each answer), so a single predicted end is not enough. The
poller keeps a *distribution* of each job's duration and chooses poll times against it:

* **What the run has seen** (:class:`DurationHistory`): the log of seconds per task of
  the jobs finished so far gives a lognormal prior (its spread is learnt, not assumed),
  and how well each job's progress matched three ways tasks can end: evenly through the
  job, at independent uniform points inside it, or with a progress count that says
  nothing.
* **What this job shows** (:class:`PollPlan`): ``completed`` of ``total`` after ``elapsed``
  seconds is a likelihood for the end under each of those models; the prior times their
  learnt mixture, given the job still runs, is the posterior of its end.
* **Where to look**: on equal-mass points of that posterior, a short dynamic programme
  picks the poll times that minimise expected lateness plus a price per request; the
  price is set once per job so that the expected requests match the budget
  (``budget`` requests a job, POST included; by default ``2 + mean / 2``, the fair-use
  target, less a margin for jobs that outlive the plan). Each new look re-plans with
  that price.
* **What a look teaches**: the programme takes the posterior as fixed, so it never looks
  early to learn. The next look is chosen one step ahead instead: for each candidate
  time up to the programme's, the chance of each progress count it could see, the plan
  that count would lead to, and the expected cost of the whole (lateness plus price).

Before anything is known (no finished job, no progress) a look waits ``start``, then 15 %
of the job's age (at most ``maximum``); a service that shows no count until the end is
learnt from the windows its jobs ended in; jobs predicted shorter than a few GETs skip the
planning.

Example:
    >>> history = DurationHistory()
    >>> for seconds in (5.0, 5.0, 5.0):
    ...     history.record(seconds=seconds, tasks=10)
    >>> plan = PollPlan(start=0.5, maximum=10.0, history=history)
    >>> 4.9 < plan.first_delay(tasks=10) < 5.1
    True
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass, field

# Poll a little after a planned end, not at it: arriving early costs one more request.
_LATE_BY_S = 0.02
_LATE_FRACTION = 0.1
# Jobs predicted shorter than this end within a few GETs: poll at the prediction, no plan.
_PLAN_FROM_S = 0.05
# Before anything is known of a job, a look waits this share of its age (after ``start``).
_BLIND_GROWTH = 0.15
# Once every planned look has passed, re-poll quickly and back off from there.
_OVERDUE_START_S = 0.05
# Rounds of the fit of the prior to the windows the finished jobs ended in.
_FIT_ROUNDS = 12
# Samples of seconds per task kept (older ones weigh less): enough for a spread.
_WINDOW = 32
_RECENCY = 0.85  # each older sample weighs this much less
# The spread assumed after a single sample (log units): a job may take 0.4-2.7x the first.
_ONE_SAMPLE_SIGMA = 0.5
# The narrowest spread believed: the client's own estimate of each end is this uncertain.
_MIN_SIGMA = 0.004
# A share of the prior that allows anything from 0.2x to 20x the typical job, so a service
# that changes pace, or a job unlike the others, is still predicted.
_BROAD_SHARE = 0.03
_BROAD_FACTOR = 20.0
# Posterior resolution: fine points for the density, equal-mass points for the planning.
_FINE_POINTS = 160
_PLAN_POINTS = 32
# Progress models: tasks end evenly, at uniform points, or the count says nothing.
EVEN, UNIFORM, SILENT = "even", "uniform", "silent"
# Even is the narrowest belief: before any job has shown it, it is not the likeliest.
_MODEL_PRIOR = {EVEN: 0.25, UNIFORM: 0.65, SILENT: 0.10}
# Likelihood left to the even model when progress contradicts it (it is never ruled out).
_EVEN_MISS = 0.02
_SILENT_MISS = 0.001
# Each finished job's evidence counts this much less per later job.
_MODEL_DECAY = 0.85
# The automatic budget: 2 + mean/2 requests (the fair-use target) less this margin.
_AUTO_MARGIN = 0.6
# One step ahead: candidate look times (an even grid up to the plan's next look, plus
# its equal-mass ends there) and the coarser posterior each possible count is planned on.
_AHEAD_GRID = 6
_AHEAD_POINTS = 24
# Counts less likely than this share are not planned for (they change nothing).
_AHEAD_MIN_CHANCE = 5e-3
# Counts a look could see, planned for one by one up to this many, then in steps.
_AHEAD_COUNTS = 12
# Jobs predicted shorter than this are planned without looking ahead: its CPU (a few
# milliseconds a look) would be a noticeable share of a job that short.
_AHEAD_FROM_S = 0.5
# The automatic budget never prices a request below this share of the mean duration:
# when the end is known to a few hundredths, more looks would buy next to nothing.
_PRICE_FLOOR = 0.005
# However many polls the budget has left, a plan spreads at least this many.
_MIN_PLANNED_POLLS = 1.5


@dataclass
class DurationHistory:
    """Seconds per task of this run's finished jobs, and how their progress behaved.

    Thread-safe; one per run or client.

    Example:
        >>> history = DurationHistory()
        >>> history.record(seconds=4.0, tasks=10)
        >>> history.record(seconds=6.0, tasks=10)
        >>> round(history.predict(10), 2), history.longest(20)
        (4.98, 12.0)
    """

    # (log low, log high) seconds per task of each finished job: equal when its end is
    # known, apart when it is only known to have ended between two looks (low -inf: it was
    # done at the first look).
    _windows: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=_WINDOW))
    _longest_per_task: float = 0.0
    _model_scores: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(_MODEL_PRIOR, 0.0)
    )
    # Whether this service was seen counting tasks while a job ran: until it has, a count
    # of 0 says nothing (a service may show completed_tasks only at the end).
    _counts_tasks: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def saw_count(self) -> None:
        """Remember that a running job showed ``completed_tasks`` above 0."""
        self._counts_tasks = True

    @property
    def counts_tasks(self) -> bool:
        """Whether a running job was ever seen with a count above 0 (see :meth:`saw_count`)."""
        return self._counts_tasks

    def record(self, *, seconds: float, tasks: int, upper_bound: bool = False) -> None:
        """Remember that a finished job of ``tasks`` conversations took ``seconds``.

        ``upper_bound``: it was already terminal when first seen, so it took at most
        ``seconds`` (see :meth:`record_window`).
        """
        self.record_window(low=0.0 if upper_bound else seconds, high=seconds, tasks=tasks)

    def record_window(self, *, low: float, high: float, tasks: int) -> None:
        """Remember that a finished job of ``tasks`` took more than ``low``, at most ``high``.

        A job seen running at ``low`` and done at ``high``, with nothing in between to say
        where it ended (no progress), teaches only that window; the prior is fitted to the
        windows (:meth:`prior`), so the learnt spread is the jobs', not the looks'.

        Example:
            >>> history = DurationHistory()
            >>> for low, high in ((4.0, 5.5), (4.5, 5.2), (4.8, 6.0)):
            ...     history.record_window(low=low, high=high, tasks=10)
            >>> 4.6 < history.predict(10) < 5.3
            True
        """
        if tasks <= 0 or high <= 0:
            return
        low = min(max(low, 0.0), high)
        with self._lock:
            # As seen, never shrunk: an upper bound is still a time a job may take.
            self._longest_per_task = max(self._longest_per_task, high / tasks)
            log_low = math.log(low / tasks) if low > 0 else -math.inf
            self._windows.append((log_low, math.log(high / tasks)))

    def record_progress(self, likelihoods: dict[str, float]) -> None:
        """Weigh the progress models by how likely each made a finished job's progress."""
        with self._lock:
            for model, score in self._model_scores.items():
                value = max(likelihoods.get(model, 1.0), 1e-9)
                self._model_scores[model] = _MODEL_DECAY * score + math.log(value)

    def model_weights(self) -> dict[str, float]:
        """The share each progress model has earned so far (the prior before any job)."""
        with self._lock:
            scores = dict(self._model_scores)
        top = max(scores.values())
        raw = {m: _MODEL_PRIOR[m] * math.exp(s - top) for m, s in scores.items()}
        total = sum(raw.values())
        return {m: value / total for m, value in raw.items()}

    def prior(self, tasks: int) -> tuple[float, float] | None:
        """``(mu, sigma)`` of the log duration of a job of ``tasks``, or None before a sample.

        Example:
            >>> DurationHistory().prior(10) is None
            True
        """
        with self._lock:
            windows = list(self._windows)
        if not windows:
            return None
        # Recent jobs weigh more, so the prediction follows a service that changes pace.
        weights = [_RECENCY**age for age in range(len(windows) - 1, -1, -1)]
        mu, spread = _fit_windows(windows, weights)
        if len(windows) == 1:
            return mu + math.log(max(tasks, 1)), _ONE_SAMPLE_SIGMA
        total = sum(weights)
        count = total * total / sum(w * w for w in weights)  # the effective number of samples
        # A prediction for the next job: the spread plus the mean's own uncertainty.
        sigma = max(spread * math.sqrt(1 + 1 / count), _MIN_SIGMA)
        return mu + math.log(max(tasks, 1)), sigma

    def predict(self, tasks: int) -> float | None:
        """Typical (median) duration of a job of ``tasks`` conversations; None before a sample."""
        prior = self.prior(tasks)
        return None if prior is None else math.exp(prior[0])

    def longest(self, tasks: int) -> float:
        """The longest a job of ``tasks`` conversations took so far, per task (0 before any).

        Example:
            >>> history = DurationHistory()
            >>> history.record(seconds=2.0, tasks=4, upper_bound=True)
            >>> history.longest(4), history.predict(4) <= 2.0
            (2.0, True)
        """
        with self._lock:
            return self._longest_per_task * max(tasks, 1)


def _fit_windows(windows: list[tuple[float, float]], weights: list[float]) -> tuple[float, float]:
    """``(mu, sigma)`` of a normal fitted to log windows (EM for interval-censored samples).

    Each window holds one sample somewhere inside it; each round replaces it by its mean
    and variance under the current fit, truncated to the window.

    Example:
        >>> mu, sigma = _fit_windows([(0.0, 0.0), (1.0, 1.0)], [1.0, 1.0])
        >>> round(mu, 3), round(sigma, 3)
        (0.5, 0.707)
    """
    total = sum(weights)
    points = [high if low == -math.inf else (low + high) / 2 for low, high in windows]
    mu = sum(w * x for w, x in zip(weights, points, strict=True)) / total
    sigma = _ONE_SAMPLE_SIGMA
    corrected = total - sum(w * w for w in weights) / total  # unbiased weighted variance
    if corrected <= 0:
        return mu, sigma
    for _ in range(_FIT_ROUNDS):
        moments = [_truncated_moments(low, high, mu, sigma) for low, high in windows]
        mu = sum(w * m for w, (m, _) in zip(weights, moments, strict=True)) / total
        second = sum(w * ((m - mu) ** 2 + v) for w, (m, v) in zip(weights, moments, strict=True))
        sigma = max(math.sqrt(second / corrected), _MIN_SIGMA)
    return mu, sigma


def _truncated_moments(low: float, high: float, mu: float, sigma: float) -> tuple[float, float]:
    """Mean and variance of a normal ``(mu, sigma)`` within ``[low, high]``."""
    if high - low < 1e-12:
        return high, 0.0
    a, b = (low - mu) / sigma, (high - mu) / sigma
    mass = _phi_cdf(b) - _phi_cdf(a)
    if mass < 1e-9:  # the fit puts no weight there: the window's end nearer the fit
        return (high if b < 0 else low), 0.0
    pa, pb = _phi(a), _phi(b)
    ta = a * pa if math.isfinite(a) else 0.0
    shift = (pa - pb) / mass
    variance = sigma * sigma * max(1 + (ta - b * pb) / mass - shift * shift, 0.0)
    return mu + sigma * shift, variance


def _phi(z: float) -> float:
    return math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi) if math.isfinite(z) else 0.0


def _phi_cdf(z: float) -> float:
    return 0.5 * math.erfc(-z / math.sqrt(2))


@dataclass(frozen=True)
class _Progress:
    """The looks at a running job so far, and the even model's window of its end."""

    looks: tuple[tuple[float, int], ...]  # (elapsed, completed), in order
    total: int
    even_after: float
    even_by: float  # math.inf when the even model allows any later end
    even_broken: bool = False  # two looks no even end could explain

    @property
    def elapsed(self) -> float:
        return self.looks[-1][0]

    @property
    def completed(self) -> int:
        return self.looks[-1][1]


def _uniform_likelihood(progress: _Progress, end: float) -> float:
    """Chance of the counts seen if the first ``total - 1`` tasks end at uniform points.

    The last task ends with the job; the counts between looks are multinomial.
    """
    n = progress.total - 1
    log, before_t, before_k = math.lgamma(n + 1), 0.0, 0
    for elapsed, completed in progress.looks:
        k = min(completed, n)
        share, count = (elapsed - before_t) / end, k - before_k
        if count < 0 or share <= 0:
            return 0.0
        log += count * math.log(share) - math.lgamma(count + 1)
        before_t, before_k = elapsed, k
    rest, count = 1 - before_t / end, n - before_k
    if rest <= 0:
        return 0.0
    return math.exp(log + count * math.log(rest) - math.lgamma(count + 1))


def _progress_likelihoods(progress: _Progress, end: float) -> dict[str, float]:
    """How likely each model makes the looks seen, if the job ends at ``end``.

    Even: task i ends at ``end * (i + 1) / total``, so each count is determined. Uniform:
    see :func:`_uniform_likelihood`. Silent: the count stays 0 until the job ends.
    """
    inside = progress.even_after < end <= progress.even_by
    even = 1.0 if inside and not progress.even_broken else _EVEN_MISS
    silent = 1.0 if all(k == 0 for _, k in progress.looks) else _SILENT_MISS
    return {EVEN: even, UNIFORM: _uniform_likelihood(progress, end), SILENT: silent}


def _even_window(elapsed: float, completed: int, total: int) -> tuple[float, float]:
    """Tasks ending evenly: ``completed`` of ``total`` at ``elapsed`` bounds the end."""
    after = max(elapsed * total / (completed + 1), elapsed)
    by = elapsed * total / completed if completed else math.inf
    return after, by


def _log_points(low: float, high: float, count: int) -> list[float]:
    step = math.log(high / low) / (count - 1)
    return [low * math.exp(step * i) for i in range(count)]


def _lognormal_log_density(log_end: float, mu: float, sigma: float) -> float:
    """Density of the log duration (a normal), with the broad share mixed in."""
    z = (log_end - mu) / sigma
    core = math.exp(-0.5 * z * z) / (sigma * math.sqrt(2 * math.pi))
    broad = (
        1.0 / (2 * math.log(_BROAD_FACTOR)) if abs(log_end - mu) < math.log(_BROAD_FACTOR) else 0.0
    )
    return (1 - _BROAD_SHARE) * core + _BROAD_SHARE * broad


def posterior(
    *,
    after: float,
    prior: tuple[float, float] | None,
    progress: _Progress | None,
    weights: dict[str, float],
) -> list[tuple[float, float]]:
    """``(end, mass)`` points of where a job still running at ``after`` seconds ends.

    Without a prior the end is flat in log time (scale-free) over what the progress allows.
    Empty when nothing is known yet, or the job outlived every end believed.

    Example:
        >>> points = posterior(after=1.0, prior=(math.log(5.0), 0.1), progress=None,
        ...                    weights={EVEN: 1.0})
        >>> 4.8 < equal_mass_points(points, count=3)[1] < 5.2  # the median
        True
    """
    belief = _belief(after=after, prior=prior, progress=progress, weights=weights)
    return [] if belief is None else _normalised(belief.ends, belief.total())


@dataclass(frozen=True)
class _Belief:
    """Where a running job ends, as unnormalised masses per progress model on ``ends``."""

    ends: list[float]
    masses: dict[str, list[float]]

    def total(self) -> list[float]:
        return [sum(column) for column in zip(*self.masses.values(), strict=True)]


def _normalised(ends: list[float], masses: list[float]) -> list[tuple[float, float]]:
    total = sum(masses)
    if total <= 0 or not math.isfinite(total):
        return []
    return [(end, mass / total) for end, mass in zip(ends, masses, strict=True)]


def _belief(
    *,
    after: float,
    prior: tuple[float, float] | None,
    progress: _Progress | None,
    weights: dict[str, float],
) -> _Belief | None:
    """The posterior of :func:`posterior`, kept apart per progress model."""
    ends = _grid(after, prior, progress)
    if not ends:
        return None
    masses: dict[str, list[float]] = {m: [] for m in _MODEL_PRIOR}
    for i, end in enumerate(ends):
        # Width of the point in log time: densities below are per unit of log duration.
        left = math.log(ends[i - 1]) if i else math.log(end)
        right = math.log(ends[i + 1]) if i + 1 < len(ends) else math.log(end)
        width = max((right - left) / 2, 1e-9)
        density = 1.0 if prior is None else _lognormal_log_density(math.log(end), *prior)
        fit = _progress_likelihoods(progress, end) if progress is not None else {}
        for model, column in masses.items():
            column.append(density * width * weights.get(model, 0.0) * fit.get(model, 1.0))
    return _Belief(ends, masses)


def _grid(
    after: float, prior: tuple[float, float] | None, progress: _Progress | None
) -> list[float]:
    """Ends after ``after`` to weigh: log-spaced over what the prior and progress allow."""
    spans: list[tuple[float, float]] = []
    if prior is not None:
        mu, sigma = prior
        spans.append((math.exp(mu - 4 * sigma), math.exp(mu + 4 * sigma)))
        spans.append((math.exp(mu) / _BROAD_FACTOR, math.exp(mu) * _BROAD_FACTOR))
    if progress is not None and progress.completed > 0:
        guess = progress.elapsed * progress.total / progress.completed
        spans.append((progress.elapsed, guess * 4))
        if not progress.even_broken and math.isfinite(progress.even_by):
            # The even model's window can be narrower than the other spans' steps.
            spans.append((progress.even_after * 1.000001, progress.even_by))
    if not spans:
        return []
    ends = {
        p
        for low, high in spans
        for p in _log_points(max(low, 1e-6), high, _FINE_POINTS // len(spans))
    }
    return sorted(end for end in ends if end > after)


def _after_look(
    belief: _Belief, progress: _Progress | None, at: float, count: int, total: int
) -> list[float]:
    """``belief``'s masses times the chance that a look at ``at`` sees ``count`` tasks done
    (0 where the job would have ended by then): summed, the chance of that count."""
    n = total - 1
    last_at, last = progress.looks[-1] if progress is not None else (0.0, 0)
    last = min(last, n)
    if count < last:
        return [0.0] * len(belief.ends)
    ways = math.lgamma(n - last + 1) - math.lgamma(count - last + 1) - math.lgamma(n - count + 1)
    even, uniform, silent = belief.masses[EVEN], belief.masses[UNIFORM], belief.masses[SILENT]
    out = []
    for i, end in enumerate(belief.ends):
        if end <= at:
            out.append(0.0)
            continue
        # Uniform: the tasks not seen yet end at uniform points between the last look and the end.
        share = (at - last_at) / (end - last_at)
        chance = uniform[i] * math.exp(
            ways + (count - last) * math.log(share) + (n - count) * math.log1p(-share)
        )
        even_count = min(max(int(at * total / end), last), n)
        chance += even[i] * (1.0 if even_count == count else _EVEN_MISS)
        chance += silent[i] * (1.0 if count == 0 else _SILENT_MISS)
        out.append(chance)
    return out


def equal_mass_points(points: list[tuple[float, float]], count: int = _PLAN_POINTS) -> list[float]:
    """``count`` ends, each carrying an equal share of ``points``' mass (mid-quantiles).

    Example:
        >>> equal_mass_points([(1.0, 0.5), (3.0, 0.5)], count=2)
        [1.0, 3.0]
    """
    out: list[float] = []
    cumulative, index = 0.0, 0
    for end, mass in points:
        cumulative += mass
        while index < count and (index + 0.5) / count <= cumulative + 1e-12:
            out.append(end)
            index += 1
    while len(out) < count:
        out.append(points[-1][0])
    return out


def plan_polls(ends: list[float], price: float) -> tuple[float, float]:
    """The next poll time and the expected number of polls, on equal-mass ``ends``.

    Minimises expected lateness (poll time minus end) plus ``price`` seconds per poll;
    each poll covers the ends up to it, the last one covers them all.

    Example:
        >>> plan_polls([4.0, 5.0, 6.0], price=100.0)
        (6.0, 1.0)
        >>> plan_polls([4.0, 5.0, 6.0], price=0.0)[0]
        4.0
    """
    _, polls, first = _programme(ends, price)
    return ends[first - 1], polls


def plan_cost(ends: list[float], price: float) -> float:
    """Expected lateness plus ``price`` per poll of :func:`plan_polls`' plan.

    Example:
        >>> plan_cost([4.0, 5.0, 6.0], price=100.0)  # one poll at 6: late by 1 on average
        101.0
    """
    return _programme(ends, price)[0]


def _programme(ends: list[float], price: float) -> tuple[float, float, int]:
    """``(cost, expected polls, index after the first poll)`` of the best plan."""
    count = len(ends)
    mass = 1.0 / count
    covered = [0.0]
    for end in ends:
        covered.append(covered[-1] + end * mass)
    cost = [0.0] * (count + 1)
    polls = [0.0] * (count + 1)
    choice = [count] * (count + 1)
    # State s: the first s ends have passed (the job was seen running after them).
    for s in range(count - 1, -1, -1):
        survival = (count - s) * mass
        best = math.inf
        for j in range(s + 1, count + 1):
            late = ends[j - 1] * (j - s) * mass - (covered[j] - covered[s])
            value = price * survival + late + cost[j]
            if value < best:
                best, choice[s] = value, j
        cost[s] = best
        polls[s] = survival + polls[choice[s]]
    return cost[0], polls[0], choice[0]


def price_for(ends: list[float], polls: float) -> float:
    """The price per poll at which :func:`plan_polls` expects at most ``polls`` polls.

    Example:
        >>> ends = [float(x) for x in range(1, 33)]
        >>> plan_polls(ends, price_for(ends, 3.0))[1] <= 3.0
        True
    """
    low, high = 1e-6 * ends[-1], 10.0 * ends[-1]
    if polls <= 1.0 or plan_polls(ends, low)[1] <= polls:
        return high if polls <= 1.0 else low
    for _ in range(18):
        middle = math.sqrt(low * high)
        if plan_polls(ends, middle)[1] > polls:
            low = middle
        else:
            high = middle
    return high


def _add_look(progress: _Progress | None, elapsed: float, completed: int, total: int) -> _Progress:
    """``progress`` with one more look; the even model's window narrowed by it."""
    after, by = _even_window(elapsed, completed, total)
    broken = False
    if progress is not None and progress.total == total:
        # Every look bounds the end under the even model: keep what they all allow.
        low, high = max(after, progress.even_after), min(by, progress.even_by)
        broken = progress.even_broken or low >= high
        if not broken:
            after, by = low, high
    kept = progress.looks if progress is not None and not broken else ()
    return _Progress((*kept, (elapsed, completed)), total, after, by, broken)


@dataclass
class PollPlan:
    """Chooses the delay before each poll of one job (one plan per job).

    ``budget``: requests a job (the POST included) to aim at; None: ``2 + mean/2`` less a
    margin, where ``mean`` is the expected duration when the plan is first made.
    """

    start: float
    maximum: float
    history: DurationHistory = field(default_factory=DurationHistory)
    budget: float | None = None
    _tasks: int = 0
    _polls: int = 0
    _overdue: float = 0.0
    _price: float | None = None
    _progress: _Progress | None = None
    _last: list[tuple[float, float]] = field(default_factory=list)

    def first_delay(self, *, tasks: int) -> float:
        """Delay between the POST and the first GET."""
        self._tasks = tasks
        return self._decide(after=0.0, total=tasks)

    def next_delay(self, *, elapsed: float, completed: int, total: int) -> float:
        """Delay before the next GET, given the job's progress ``elapsed`` s after the POST."""
        self._polls += 1
        if completed > 0:
            self.history.saw_count()
        # A 0 from a service never seen counting is silence, not slow progress.
        counted = completed > 0 or self.history.counts_tasks
        if counted and total > 0 and 0 <= completed < total and elapsed > 0:
            self._see(elapsed, completed, total)
        return self._decide(after=elapsed, total=total or self._tasks)

    def learn(
        self, *, running_until: float, done_by: float, tasks: int, seen_running: bool
    ) -> None:
        """Teach the history how long this job took: it ended in ``(running_until, done_by]``.

        With progress seen, the estimate is the plan's last posterior within that window
        (recording when we happened to look would teach the next jobs our own lateness).
        Without, the posterior is the history's own prior and would only confirm it: the
        window itself is recorded, and the prior fitted to the windows of every job.
        """
        low = running_until if seen_running else 0.0
        window = [(end, mass) for end, mass in self._last if low < end <= done_by]
        weight = sum(mass for _, mass in window)
        if self._progress is None or weight <= 0:
            self.history.record_window(low=low, high=done_by, tasks=tasks)
            return
        took = sum(end * mass for end, mass in window) / weight
        self.history.record(seconds=took, tasks=tasks)
        self.history.record_progress(self._model_fit(window))

    def _model_fit(self, window: list[tuple[float, float]]) -> dict[str, float]:
        """Each model's likelihood of the looks seen, over where the job likely ended."""
        progress = self._progress
        assert progress is not None
        if not window:
            return {}
        weight = sum(mass for _, mass in window)
        fits = [(_progress_likelihoods(progress, end), mass) for end, mass in window]
        return {m: sum(fit[m] * mass for fit, mass in fits) / weight for m in _MODEL_PRIOR}

    def _see(self, elapsed: float, completed: int, total: int) -> None:
        self._progress = _add_look(self._progress, elapsed, completed, total)

    def _decide(self, *, after: float, total: int) -> float:
        prior = self.history.prior(total) if total > 0 else None
        progress = self._progress
        if prior is not None and math.exp(prior[0]) < _PLAN_FROM_S:
            return self._short_job(after, total)
        weights = self.history.model_weights()
        belief = _belief(after=after, prior=prior, progress=progress, weights=weights)
        points = [] if belief is None else _normalised(belief.ends, belief.total())
        if belief is None or not points:
            seen = progress is not None and progress.completed > 0
            return self._no_plan(after, known=prior is not None or seen)
        self._last = points
        ends = equal_mass_points(points)
        if self._price is None:
            self._price = price_for(ends, self._poll_budget(points))
            if self.budget is None:
                mean = sum(end * mass for end, mass in points)
                self._price = max(self._price, _PRICE_FLOOR * mean)
        when, _ = plan_polls(ends, self._price)
        if total > 1 and when >= _AHEAD_FROM_S:
            when = self._look_ahead(after, when, belief, total)
        self._overdue = 0.0
        return self._clamp(when - after + min(_LATE_BY_S, _LATE_FRACTION * when))

    def _look_ahead(self, after: float, when: float, belief: _Belief, total: int) -> float:
        """The next look: the programme's ``when``, or earlier if what it shows pays."""
        price = self._price
        assert price is not None
        masses = belief.total()
        weight = sum(masses)
        ends = equal_mass_points(_normalised(belief.ends, masses), _AHEAD_POINTS)
        best, best_cost = when, plan_cost(ends, price)
        grid = {after + (when - after) * (i + 1) / (_AHEAD_GRID + 1) for i in range(_AHEAD_GRID)}
        for at in sorted(grid | {end for end in ends if after < end < when}):
            # Lateness if it has ended by then; else each count's own plan from there.
            cost = (
                price
                + sum(
                    (at - end) * mass
                    for end, mass in zip(belief.ends, masses, strict=True)
                    if end <= at
                )
                / weight
            )
            cost += self._cost_of_counts(at, belief, weight, total)
            if cost < best_cost:
                best, best_cost = at, cost
        return best

    def _cost_of_counts(self, at: float, belief: _Belief, weight: float, total: int) -> float:
        """Expected cost from ``at`` on, over the counts a look then could see (at most
        ``_AHEAD_COUNTS`` of them, each standing for the ``step`` counts from it).

        Not renormalised: the models' floors for a contradicting count (``_EVEN_MISS``)
        add a little weight to the broad plans that follow a surprise, which keeps a
        well-predicted job from paying for looks that would only confirm it.
        """
        price = self._price
        assert price is not None
        first = min(self._progress.completed if self._progress else 0, total - 1)
        step = max(1, math.ceil((total - first) / _AHEAD_COUNTS))
        cost = 0.0
        for count in range(first, total, step):
            seen = _after_look(belief, self._progress, at, count, total)
            chance = sum(seen) / weight * step
            if chance >= _AHEAD_MIN_CHANCE:
                later = equal_mass_points(_normalised(belief.ends, seen), _AHEAD_POINTS)
                cost += chance * plan_cost(later, price)
        return cost

    def _poll_budget(self, points: list[tuple[float, float]]) -> float:
        """GETs left for this job, from the request budget less the POST and polls made."""
        requests = self.budget
        if requests is None:
            mean = sum(end * mass for end, mass in points)
            requests = 2 + mean / 2 - _AUTO_MARGIN
        return max(requests - 1 - self._polls, _MIN_PLANNED_POLLS)

    def _short_job(self, after: float, total: int) -> float:
        predicted = self.history.predict(total) or 0.0
        if after < predicted:
            return self._clamp(predicted - after + min(_LATE_BY_S, _LATE_FRACTION * predicted))
        return self._no_plan(after, known=True)

    def _no_plan(self, after: float, *, known: bool) -> float:
        if not known:
            # Nothing known of this job or its kind: look every ``start`` seconds, then a
            # share of the time waited so far (late by at most that share of the job).
            return self._clamp(max(self.start, _BLIND_GROWTH * after))
        # Every end believed has passed and the job still runs: look again soon.
        self._overdue = min(max(self._overdue * 2, _OVERDUE_START_S), self.maximum)
        return self._overdue

    def _clamp(self, delay: float) -> float:
        return min(max(delay, 1e-4), self.maximum)
