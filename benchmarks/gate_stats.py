"""The regression gate's decision (``benchmarks/gate.py``): pure functions on samples, no torch.

A case's samples are per-round ratios (its time over a yardstick's time in the same round), so a
slowdown of the whole machine cancels. Against one yardstick a case regresses only when both of
these say so:

* Mann-Whitney U, one-sided (new samples stochastically larger than old), p < ``alpha``: asv's
  ``compare`` uses the same rank test, which needs no normality and ignores a few outliers;
* the effect: median(new) / median(old) >= ``min_effect``. Rounds within one run are not
  independent of the run's own drift, so on a busy machine the test alone finds "significant"
  shifts of a few percent between any two runs; the effect size is what keeps false alarms out.

Each case has several yardsticks (``decide_all``): fixed kernels bound in different ways (a dense
conv: compute; a depthwise conv: memory traffic and per-op overhead; a gemv: memory bandwidth)
and, for a decomposition, its original layer. Other jobs slow these by different factors, so a
ratio to one yardstick drifts when the load changes kind (a memory-bound case against a
compute-bound reference moved by up to 1.4x in the first evidence runs). The case's own code
getting slower moves its ratio to every yardstick. A decomposition has four (the three references
and its original) and regresses when it regressed against all but ``DISSENT`` (one) of them: a
single yardstick that happened to slow down as much as the case cannot hide a regression. An
original has only the three references, one per kind of boundness, and a load of one kind moves
exactly one of them against the other two (a memory-streaming job made the batch-1 Linears 2x
slower against the conv references, not against the gemv), so it regresses only against all
three. The verdict reported is the weakest of the yardsticks that carry it. (Requiring every
yardstick of a decomposition, the gate's second version, took the minimum of four noisy effects:
biased low, it caught 8 of 12 cases slowed by about 1.25x; allowing a dissent among three, tried
next, flagged the Linears' originals under memory load; results/bench_gate/, git history.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy.stats import mannwhitneyu

# Defaults, from results/bench_gate/: with one compute-bound reference, unchanged code moved a
# case's median ratio by up to 1.3x when the load changed kind between --save and --compare
# (first evidence, kept in git history), which is why every case now has several yardsticks
# (decide_all). 1.2x is asv's and the order of magnitude: a 1.3x slowdown of the ops that
# carry two thirds or more of a case's time reaches it.
MIN_EFFECT = 1.2    # median(new) / median(old) at or above which a case may be flagged
ALPHA = 0.01        # one-sided Mann-Whitney U significance level
MIN_SAMPLES = 3     # per side; fewer cannot reach a useful p-value
DISSENT = 1         # yardsticks that may disagree with a regression, for a case with >= 4 of them


@dataclass(frozen=True)
class Verdict:
    old: float        # median of the old samples (a ratio to the case's reference)
    new: float        # median of the new samples
    effect: float     # new / old
    p: float          # one-sided Mann-Whitney U p-value (new > old)
    regressed: bool


def median(xs: Sequence[float]) -> float:
    s = sorted(xs)
    n = len(s)
    if n == 0:
        raise ValueError("median of no samples")
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


def check_settings(min_effect: float, alpha: float) -> None:
    if not (isinstance(min_effect, (int, float)) and math.isfinite(min_effect) and min_effect > 1):
        raise ValueError(f"min_effect must be a finite number > 1 (a slowdown factor); got {min_effect!r}")
    if not (isinstance(alpha, (int, float)) and 0 < alpha < 1):
        raise ValueError(f"alpha must be a number in (0, 1); got {alpha!r}")


def decide(old: Sequence[float], new: Sequence[float], *, min_effect: float = MIN_EFFECT,
           alpha: float = ALPHA) -> Verdict:
    """Whether ``new`` samples are slower than ``old`` by a significant and large enough factor."""
    check_settings(min_effect, alpha)
    for name, xs in (("old", old), ("new", new)):
        if len(xs) < MIN_SAMPLES:
            raise ValueError(f"{name} needs at least {MIN_SAMPLES} samples; got {len(xs)}")
        if not all(math.isfinite(x) and x > 0 for x in xs):
            raise ValueError(f"{name} samples must be finite and > 0; got {list(xs)!r}")
    m_old, m_new = median(old), median(new)
    p = float(mannwhitneyu(new, old, alternative="greater").pvalue)
    effect = m_new / m_old
    return Verdict(old=m_old, new=m_new, effect=effect, p=p,
                   regressed=bool(p < alpha and effect >= min_effect))


@dataclass(frozen=True)
class MultiVerdict:
    yardstick: str              # the weakest yardstick carrying the verdict (see decide_all)
    old: float
    new: float
    effect: float
    p: float                    # the largest p-value over the yardsticks carrying the verdict
    regressed: bool             # regressed against at least ``quorum`` yardsticks
    quorum: int                 # how many yardsticks had to agree
    per: dict                   # yardstick -> Verdict
    slower: bool = False        # significantly slower (p < alpha, any effect > 1) against ``quorum``


def quorum(n: int, dissent: int = DISSENT) -> int:
    """Yardsticks that must agree out of ``n``: all of them with fewer than four (an original's
    three references, one per kind of load: see the module docstring), else all but ``dissent``."""
    if dissent < 0:
        raise ValueError(f"dissent must be >= 0; got {dissent!r}")
    return n if n < 4 else max(1, n - dissent)


def decide_all(old: dict[str, Sequence[float]], new: dict[str, Sequence[float]], *,
               min_effect: float = MIN_EFFECT, alpha: float = ALPHA,
               dissent: int = DISSENT) -> MultiVerdict:
    """``old`` / ``new``: yardstick name -> ratios to it. Regressed when regressed against at
    least ``quorum(n)`` of the ``n`` yardsticks both sides have (see the module docstring).

    The figures reported are those of the ``quorum(n)`` yardsticks with the largest effects
    (regressed ones first: the ones that carry a regression): the smallest effect and the largest p among them."""
    names = [k for k in old if k in new]
    if not names:
        raise ValueError(f"no yardstick in common: old has {sorted(old)}, new has {sorted(new)}")
    per = {k: decide(old[k], new[k], min_effect=min_effect, alpha=alpha) for k in names}
    need = quorum(len(names), dissent)
    carrying = sorted(names, key=lambda k: (per[k].regressed, per[k].effect), reverse=True)[:need]
    w = per[carrying[-1]]
    return MultiVerdict(yardstick=carrying[-1], old=w.old, new=w.new, effect=w.effect,
                        p=max(per[k].p for k in carrying),
                        regressed=sum(v.regressed for v in per.values()) >= need,
                        quorum=need, per=per,
                        slower=sum(v.p < alpha and v.effect > 1 for v in per.values()) >= need)


def pool(a: dict[str, Sequence[float]], b: dict[str, Sequence[float]]) -> dict[str, list[float]]:
    """The samples of two measurements of a case, yardstick by yardstick (those both have)."""
    return {k: [*a[k], *b[k]] for k in a if k in b}


def confirm(first, again, pooled) -> bool:
    """A case flagged once is re-measured. It regresses when the re-measurement alone is
    significantly slower (it is no fluke of the first measurement) and the first and second
    measurements pooled are a regression (the size is judged on all the samples: two estimates
    of a 1.25x slowdown each straddle a 1.2x threshold some of the time, their pool less often).
    Requiring each measurement alone to pass the threshold caught 4 of 6 cases slowed by about
    1.25x under a memory load (results/bench_gate/, git history)."""
    return bool(first.regressed and again is not None and again.slower
                and pooled is not None and pooled.regressed)
