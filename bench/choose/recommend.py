"""Choosing a method: `python -m bench recommend RESULTS [--prefer memory] [--max-memory 8GB] [--servable vllm] ...`.

Among the finished methods that meet every limit, the candidates are those whose score is not significantly worse
than the best's: over seeds by Welch's t-test, with one seed by a paired test over the same eval examples (McNemar's
for right/wrong scores, a paired bootstrap for graded ones; bench.analysis.paired). Of the candidates the cheapest by the
user's priority (`--prefer memory|time|size|params`, memory by default: it decides the card) is recommended, with
the methods it ties with and why it won; `--prefer score` takes the best score as before. Beside it the Pareto fronts
of score against peak memory and train time. Pure functions over records; the reports' Recommendation section is
built by the same `recommend` and `explain`. Limits apply to the mean over seeds; exit 1 when no method meets them
(saying which limit excluded which method), 2 on bad input.
"""

from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from bench.core import headline
from bench.core.config import BASELINE
from bench.core.metrics import format_value, metric
from bench.analysis.paired import describe, example_values, paired, same_examples
from bench.core.records import RunRecord
from bench.analysis.rows import Group, interval_text, score_names, seed_groups
from bench.analysis.stats import metric_front, welch
from bench.core.util import did_you_mean

# Training time is the headline figure (bench.core.headline): steady state, warm-up left out.
MEMORY, TIME = "peak_memory_bytes", headline.TIME
FRONTS = (MEMORY, TIME)  # the costs the fronts are drawn against
SAME = 1.05  # costs within 5% of each other are "about the same": peak memory and time repeat to a few percent
# --prefer: the cost the cheapest candidate is chosen by, and how the text names it; "score" keeps the best score.
PREFER = {"memory": (MEMORY, "peak memory"), "time": (TIME, "training time"), "size": ("saved_bytes", "size on disk"),
          "params": ("trainable_params", "trainable parameters"), "score": None}
SEEDS_HINT = ("Training noise is not measured: every method ran with one seed, so these comparisons judge only which "
              "eval examples were drawn, and the same run on another machine can score differently. Measure it with "
              "`seeds: [0, 1, 2]` in the suite, or add seeds to this run with `python -m bench run SUITE --seeds 3`.")

# Binary multiples, as the reports print sizes (human_bytes: 1 GB = 1024 MB).
_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": 1024 ** 2, "mb": 1024 ** 2, "mib": 1024 ** 2,
               "g": 1024 ** 3, "gb": 1024 ** 3, "gib": 1024 ** 3, "t": 1024 ** 4, "tb": 1024 ** 4, "tib": 1024 ** 4}
_TIME_UNITS = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600, "d": 86400}
_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"


def parse_size(text: str) -> float:
    """'8GB', '512 MB', '1.5GiB', '50M' or a number of bytes; K/M/G/T are powers of 1024, as the reports print."""
    m = re.fullmatch(rf"\s*{_NUMBER}\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"cannot read {text!r} as a size; write e.g. 8GB, 512MB, 1.5GiB or a number of bytes")
    return float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]


def parse_duration(text: str) -> float:
    """'1h', '90m', '45s', '1h30m', '2.5h' or a number of seconds."""
    parts = re.findall(rf"{_NUMBER}\s*([a-zA-Z]*)", text)
    rebuilt = re.sub(r"\s+", "", "".join(n + u for n, u in parts))
    if not parts or rebuilt != re.sub(r"\s+", "", text) or any(u.lower() not in _TIME_UNITS for _, u in parts) or \
            (len(parts) > 1 and any(not u for _, u in parts)):
        raise ValueError(f"cannot read {text!r} as a duration; write e.g. 1h, 90m, 45s, 1h30m or a number of seconds")
    return sum(float(n) * _TIME_UNITS[u.lower()] for n, u in parts)


def parse_min_score(text: str) -> tuple[str, float]:
    """'exact_match=0.9': METRIC=VALUE."""
    name, sep, value = text.partition("=")
    try:
        if not sep or not name.strip():
            raise ValueError
        return name.strip(), float(value)
    except ValueError:
        raise ValueError(f"cannot read {text!r} as METRIC=VALUE; write e.g. exact_match=0.9") from None


def limit_bytes(n: float) -> str:
    """A limit as given, to three figures: rounded to the reports' one decimal, 2.45GB would read as 2.5 GB."""
    k = max((i for i in range(5) if n >= 1024 ** i), default=0)
    return f"{n / 1024 ** k:.3g} {['B', 'KB', 'MB', 'GB', 'TB'][k]}"


def human_duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:g} s"
    if seconds < 7200:
        return f"{seconds / 60:g} min"
    return f"{seconds / 3600:g} h"


@dataclass(frozen=True)
class Constraints:
    """Limits on the mean over seeds. max_adapter_size counts what a method saves: its adapter, or for full
    fine-tuning its whole checkpoint. min_scores: (metric, value) pairs, 'at least as good as' in the metric's
    direction (at most, for eval_loss)."""

    max_memory: float | None = None
    max_train_time: float | None = None
    max_adapter_size: float | None = None
    min_scores: tuple[tuple[str, float], ...] = ()
    servable: str | None = None  # a serving stack (bench.analysis.serving.STACKS) that must load the adapter as it is


def saved_bytes(g: Group) -> float | None:
    """What the method leaves to store and ship: the adapter, or the whole checkpoint where it trains everything."""
    return g.mean("adapter_bytes") if g.mean("adapter_bytes") is not None else g.mean("checkpoint_bytes")


def _limits(c: Constraints) -> list[tuple[str, str, float, str]]:
    """(flag as the user gave it, what is measured, limit, direction the value must not cross)."""
    out = []
    if c.max_memory is not None:
        out.append((f"--max-memory {limit_bytes(c.max_memory)}", MEMORY, c.max_memory, "lower"))
    if c.max_train_time is not None:
        out.append((f"--max-train-time {human_duration(c.max_train_time)}", TIME, c.max_train_time, "lower"))
    if c.max_adapter_size is not None:
        out.append((f"--max-adapter-size {limit_bytes(c.max_adapter_size)}", "saved_bytes", c.max_adapter_size,
                    "lower"))
    for name, value in c.min_scores:
        out.append((f"--min-score {name}={value:g}", name, value, metric(name).better))
    return out


def _value(g: Group, name: str) -> float | None:
    return saved_bytes(g) if name == "saved_bytes" else g.mean(name)


def _shown(name: str, value: float, g: Group | None = None) -> str:
    """A cost as the text prints it; a whole run's time standing in for the steady one (an older record) marked."""
    if name == TIME:  # the reports' one decimal makes 0.16 s and 0.24 s both "0.2"
        text = f"{value:.2f} s" if value < 10 else f"{value:.0f} s"
        return text + (f" {headline.MARK}" if g is not None and any(TIME in headline.stand_ins(r.metrics)
                                                                     for r in g.ok) else "")
    return format_value("adapter_bytes" if name == "saved_bytes" else name, value)


@dataclass(frozen=True)
class Exclusion:
    limit: str  # the flag, e.g. "--max-memory 8.0 GB"
    excluded: list[tuple[str, str]]  # (method, its value as printed, or "not recorded")


@dataclass(frozen=True)
class Versus:
    """A method against the best score: whether it is significantly worse, and by which test."""

    group: Group
    worse: bool | None  # None: no test applies (seeds on one side only, or one seed without per-example scores)
    how: str  # the test and its evidence, in a few words


@dataclass(frozen=True)
class Recommendation:
    metric: str
    ranking: list[Group]  # the methods that meet every limit, best score first
    fronts: list[tuple[str, list[Group]]]  # (cost metric, the Pareto front among the ranked methods)
    exclusions: list[Exclusion] = field(default_factory=list)
    unfinished: list[tuple[str, str]] = field(default_factory=list)  # (method, status): some seed did not finish
    unscored: list[str] = field(default_factory=list)  # finished without the score (evaluation turned off)
    constrained: bool = False
    baseline: Group | None = None  # the untrained model, with the score
    prefer: str = "memory"  # a key of PREFER
    versus: list[Versus] = field(default_factory=list)  # every ranked method but the best, against the best
    chosen: Group | None = None

    @property
    def choice(self) -> Group | None:
        return self.chosen

    @property
    def best(self) -> Group | None:
        return self.ranking[0] if self.ranking else None

    @property
    def runner_up(self) -> Group | None:
        return self.ranking[1] if len(self.ranking) > 1 else None

    @property
    def tied(self) -> list[Versus]:
        """The methods not significantly worse than the best (the best itself left out)."""
        return [v for v in self.versus if v.worse is False]

    @property
    def one_seed(self) -> bool:
        """No ranked method ran over several seeds: training noise is not measured."""
        return bool(self.ranking) and all(len(g.ok) == 1 for g in self.ranking)


def rank_key(g: Group, score: str) -> tuple:
    """Best first: the score in its direction, then lower eval loss, then lower peak memory and train time."""
    sign = -1 if metric(score).better == "higher" else 1
    inf = math.inf

    def low(name: str) -> float:
        v = g.mean(name)
        return inf if v is None else v

    return sign * g.mean(score), low("eval_loss"), low(MEMORY), low(TIME), g.name


def check_metric(records: list[RunRecord], name: str | None) -> str:
    """The score to choose by: the one named, or the suite's first eval metric; ValueError for an unknown one."""
    known = score_names(records) + ["eval_loss"]
    if name is None:
        return known[0]
    name = name.removeprefix("hub:")
    if name not in known:
        raise ValueError(f"unknown score '{name}'{did_you_mean(name, known)}; these records have {', '.join(known)}")
    return name


def versus(best: Group, g: Group, score: str) -> Versus:
    """Is g's score significantly worse than the best's? Over seeds by Welch's t-test; with one seed each, by a
    paired test over the eval examples both answered (bench.analysis.paired); no test where neither applies."""
    a, b = best.values(score), g.values(score)
    if best.mean(score) == g.mean(score):
        return Versus(g, False, "the same score")
    if len(a) > 1 and len(b) > 1:
        d = welch(a, b)
        # Not significantly worse is not shown equal: say how large a gap the seeds leave open.
        gap = "" if d.supported or not d.half_width else \
            f"; a gap up to {format_value(score, d.delta + d.half_width)} is not ruled out"
        return Versus(g, d.supported, f"Welch's t-test over seeds, p = {d.p:.2g}{gap}")
    if len(a) > 1 or len(b) > 1:
        return Versus(g, None, "seeds on one side only")
    ra, rb = best.ok[0], g.ok[0]
    va, vb = example_values(ra, score), example_values(rb, score)
    if va is None or vb is None or len(va) != len(vb) or not same_examples(ra, rb):
        return Versus(g, None, "no per-example scores on the same eval examples to pair")
    test = paired(va, vb)
    return Versus(g, test.supported, f"{test.method}: {describe(test)}")


def cost_of(g: Group, prefer: str) -> float:
    v = _value(g, PREFER[prefer][0])
    return math.inf if v is None else v


def _choose(ranking: list[Group], score: str, prefer: str) -> tuple[Group | None, list[Versus]]:
    """The cheapest by `prefer` among the best and the methods not significantly worse (ties by score rank)."""
    if not ranking:
        return None, []
    best = ranking[0]
    against = [versus(best, g, score) for g in ranking[1:]]
    if prefer == "score":
        return best, against
    candidates = [best] + [v.group for v in against if v.worse is False]
    # Costs within SAME of the cheapest are the same cost (memory and time repeat to a few percent): of those, the
    # better score wins, so 1.49 GB at 0.867 does not beat 1.54 GB at 1.000.
    cheapest = min(cost_of(g, prefer) for g in candidates)
    near = [g for g in candidates if cost_of(g, prefer) <= cheapest * SAME or cost_of(g, prefer) == cheapest]
    return min(near, key=ranking.index), against


def _servable_exclusion(finished: list[Group], stack: str) -> Exclusion | None:
    from bench.analysis.serving import STACKS, verdicts

    out = []
    for g in finished:
        found = verdicts(g.method, g.records[0].config.params)
        how = next((v.how for v in found or [] if v.stack == stack), "not known")
        if how != "as-is":
            out.append((g.name, how))
    return Exclusion(f"--servable {STACKS[stack].id}", out) if out else None


def recommend(records: list[RunRecord], constraints: Constraints = Constraints(), score: str | None = None,
              prefer: str = "memory") -> Recommendation:
    """Rank the finished trained methods that meet every limit and choose among them; the baseline is the untrained
    reference, no candidate. A method counts only when every one of its seeds finished."""
    score = _named("--metric", check_metric, records, score)
    _named("--prefer", check_prefer, prefer)
    for name, _ in constraints.min_scores:
        _named("--min-score", check_metric, records, name)
    trained = [g for g in seed_groups(records) if g.method != BASELINE]
    unfinished = [(g.name, g.status + (f" on {len(g.records) - len(g.ok)} of {len(g.records)} seeds"
                                       if g.seeded else "")) for g in trained if g.status != "success"]
    finished = [g for g in trained if g.status == "success"]
    unscored = [g.name for g in finished if g.mean(score) is None]  # a run with eval turned off: cost only
    exclusions = _exclusions(finished, constraints)
    gone = {n for e in exclusions for n, _ in e.excluded}
    eligible = [g for g in finished if g.name not in unscored and g.name not in gone]
    ranking = sorted(eligible, key=lambda g: rank_key(g, score))
    fronts = []
    for cost in FRONTS:
        pts = [(g.mean(cost), g.mean(score), g) for g in ranking if g.mean(cost) is not None]
        if pts:
            fronts.append((cost, [p[2] for p in metric_front(pts, cost, score)]))
    base = next((g for g in seed_groups(records) if g.method == BASELINE and g.ok and g.mean(score) is not None),
                None)
    chosen, against = _choose(ranking, score, prefer)
    return Recommendation(score, ranking, fronts, exclusions, unfinished, unscored,
                          bool(_limits(constraints)) or constraints.servable is not None, base, prefer, against, chosen)


def _exclusions(finished: list[Group], constraints: Constraints) -> list[Exclusion]:
    """Per limit, the finished methods it excludes (with their value, as printed)."""
    exclusions = []
    for flag, name, limit, better in _limits(constraints):
        out = []
        for g in finished:
            v = _value(g, name)
            if v is None:
                out.append((g.name, "not recorded"))
            elif v > limit if better == "lower" else v < limit:
                out.append((g.name, _shown(name, v, g)))
        if out:
            exclusions.append(Exclusion(flag, out))
    if constraints.servable is not None:
        exclusions += [e for e in [_servable_exclusion(finished, constraints.servable)] if e]
    return exclusions


def check_prefer(prefer: str) -> str:
    if prefer not in PREFER:
        raise ValueError(f"unknown priority '{prefer}'{did_you_mean(prefer, list(PREFER))}; choose one of "
                         f"{', '.join(PREFER)}")
    return prefer


def check_stack(stack: str) -> str:
    from bench.analysis.serving import STACKS

    if stack.lower() not in STACKS:
        raise ValueError(f"unknown serving stack '{stack}'{did_you_mean(stack.lower(), list(STACKS))}; "
                         f"choose one of {', '.join(STACKS)}")
    return stack.lower()


def against_baseline(rec: Recommendation) -> tuple[bool, str] | None:
    """Whether the choice scores above the untrained baseline, and a sentence saying so and whether the gap is more
    than noise: over seeds by Welch's test, else by the choice's 95% interval over the eval examples; None without
    a baseline."""
    c, b, score = rec.choice, rec.baseline, rec.metric
    if c is None or b is None:
        return None
    label, sign = metric(score).label, 1 if metric(score).better == "higher" else -1
    vc, vb = c.mean(score), b.mean(score)
    above = sign * (vc - vb) > 0
    text = (f"{c.name} {'beats' if above else 'does not beat'} the untrained baseline on {label} "
            f"({format_value(score, vc)} vs {format_value(score, vb)})")
    if not above:
        return False, text + "."
    d = welch(c.values(score), b.values(score))
    examples = c.ok[0].intervals.get(score) if len(c.ok) == 1 else None
    pair = versus(c, b, score) if d.supported is None and len(c.ok) == len(b.ok) == 1 else None
    if d.supported is not None:
        text += ", a gap the seeds support" if d.supported else ", a gap the seeds do not support (Welch's t-test)"
    elif pair is not None and pair.worse is not None:
        text += (f", by more than the noise of the eval examples ({pair.how})" if pair.worse else
                 f"; a gap the eval examples do not support ({pair.how})")
    elif examples is not None:
        inside = examples.low <= vb <= examples.high
        text += (f"; the baseline's score lies inside {c.name}'s 95% interval over the {examples.n} eval examples "
                 f"({format_value(score, examples.low)}-{format_value(score, examples.high)}): the gap may be noise"
                 if inside else f", by more than the noise of {examples.n} eval examples (95% interval "
                 f"{format_value(score, examples.low)}-{format_value(score, examples.high)}, {examples.method})")
    return True, text + "."


# ---- in words -----------------------------------------------------------------------------------------------------


def _times(a: float, b: float) -> str:
    r = max(a, b) / min(a, b)
    return f"{r:.1f}x" if r < 10 else f"{r:.0f}x"


def _cost_phrases(c: Group, r: Group) -> tuple[list[str], list[str], list[str]]:
    """Where the choice is better, worse and about the same as the runner-up: peak memory, time, size on disk."""
    gains, losses, same = [], [], []
    for name, what, less, more in ((MEMORY, "peak memory", "less", "more"), (TIME, "training time", "faster", "slower"),
                                   ("saved_bytes", "size on disk", "smaller", "larger")):
        vc, vr = _value(c, name), _value(r, name)
        if vc is None or vr is None:
            continue
        values = f"{_shown(name, vc, c)} vs {_shown(name, vr, r)}"
        if vc == vr or (min(vc, vr) > 0 and max(vc, vr) / min(vc, vr) < SAME):
            same.append(f"{what} ({values})")
        elif vc < vr:
            gains.append(f"{what} ({_times(vc, vr) + ' ' if vc > 0 else ''}{less}: {values})")
        else:
            losses.append(f"{what} ({_times(vc, vr) + ' ' if vr > 0 else ''}{more}: {values})")
    return gains, losses, same


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _tie_breaker(c: Group, r: Group, score: str) -> str:
    """Which rule put the choice first when the means tie."""
    for name, what in (("eval_loss", "lower eval loss"), (MEMORY, "lower peak memory"), (TIME, "shorter training")):
        vc, vr = c.mean(name), r.mean(name)
        if name != score and vc is not None and vr is not None and vc != vr:
            # Eval loss is a score too: say whether the seeds back the difference that decides.
            d = welch(c.values(name), r.values(name)) if name == "eval_loss" else None
            doubt = ", itself a difference the seeds do not support" if d and d.supported is False else ""
            return f"the {what} decides ({format_value(name, vc)} vs {format_value(name, vr)}{doubt})"
    return "nothing else tells them apart; the name decides"


def reason(rec: Recommendation) -> str | None:
    """Why the choice, in a few plain sentences. By cost: which methods it ties with on the score and what it saves
    against the best; by score (or when nothing ties with the best), its score against the runner-up's."""
    c = rec.choice
    if c is None:
        return None
    if rec.prefer != "score" and rec.tied:
        return _cost_reason(rec)
    return _score_reason(rec)


def _cost_text(g: Group, prefer: str) -> str:
    name = PREFER[prefer][0]
    v = _value(g, name)
    if v is None:
        return f"{PREFER[prefer][1]} not recorded"
    return f"{v:,.0f} trainable" if name == "trainable_params" else _shown(name, v, g)


def _cost_reason(rec: Recommendation) -> str:
    """The cheapest of the methods not significantly worse than the best: the tie it breaks, what it saves."""
    c, best, score, prefer = rec.choice, rec.best, rec.metric, rec.prefer
    label, what = metric(score).label, PREFER[prefer][1]
    n = len(rec.tied) + 1
    near = cost_of(c, prefer) > min(cost_of(g, prefer) for g in [best] + [v.group for v in rec.tied])
    what += " within 5%" if near else ""
    if c is best:
        text = (f"{c.name} has the best {label} ({interval_text(score, c.summary(score))}) and the least {what} "
                f"({_cost_text(c, prefer)}) of the {n} methods tied on it.")
    else:
        own = next(v.how for v in rec.tied if v.group is c)
        text = (f"{c.name} needs the least {what} ({_cost_text(c, prefer)}) of the {n} methods whose {label} is not "
                f"significantly worse than the best, {best.name} ({interval_text(score, best.summary(score))}"
                f"{'' if own == 'the same score' else f'; {c.name} against it: {own}'}).")
    text += " Costs within 5% count as the same, so the better score decides among them." if near else ""
    tied = [(best, "the best score")] * (c is not best) + [(v.group, v.how) for v in rec.tied if v.group is not c]
    text += " Tied with it: " + "; ".join(
        f"{g.name} {interval_text(score, g.summary(score))}, {_cost_text(g, prefer)} ({how})" for g, how in tied) + "."
    if c is not best:
        gains, losses, same = _cost_phrases(c, best)
        parts = [f"{how} on {_and(items)}" for how, items in (("better", gains), ("worse", losses),
                                                               ("about the same", same)) if items]
        if parts:
            text += f" Against {best.name} it is {'; '.join(parts)}."
    return text


def _score_reason(rec: Recommendation) -> str:
    """The choice's score against the runner-up's, whether the seeds (or, with one seed, the eval examples) support
    the difference; then what it gains and gives up in memory, time and size against the runner-up."""
    c, r, score = rec.choice, rec.runner_up, rec.metric
    label = metric(score).label
    sc = c.summary(score)
    if r is None:
        return f"{c.name} is the only finished method{' within the limits' if rec.constrained else ''} " \
               f"({label} {interval_text(score, sc)})."
    sr = r.summary(score)
    text = f"{c.name}: {label} {interval_text(score, sc)} vs {r.name} {interval_text(score, sr)}"
    level = True
    if sc.mean == sr.mean:
        text += f", a tie; {_tie_breaker(c, r, score)}."
    else:
        d = welch(c.values(score), r.values(score))
        paired_test = next((v for v in rec.versus if v.group is r and v.worse is not None), None)
        if d.supported is None and paired_test is not None:
            text += (f", a difference the eval examples {'support' if paired_test.worse else 'do not support'} "
                     f"({paired_test.how}).")
            level = not paired_test.worse
        elif d.supported is None:
            text += " (one seed: no interval to tell a difference from noise)."
        elif d.supported:
            text += ", a difference the seeds support (Welch's t-test, 5% level)."
            level = False
        else:
            text += ", a difference the seeds do not support (Welch's t-test, 5% level)."
    gains, losses, same = _cost_phrases(c, r)
    parts = [f"{how} on {_and(items)}" for how, items in (("better", gains), ("worse", losses),
                                                           ("about the same", same)) if items]
    if parts:
        text += f" Against {r.name} it is {'; '.join(parts)}."
    if level and losses:
        text += f" With the scores this close, {r.name}'s lower costs may matter more."
    return text


@dataclass(frozen=True)
class Explanation:
    headline: str
    reason: str | None
    details: list[str]


def explain(rec: Recommendation) -> Explanation:
    """The recommendation as text, for the terminal and the reports alike."""
    score = rec.metric
    label = metric(score).label
    details = []
    c = rec.choice
    if c is None:
        headline = "No method meets the limits." if rec.constrained else "No finished trained run to recommend."
    else:
        n = len(c.ok)
        seeds = f", {n} seeds" if n > 1 else ""
        headline = f"Recommended: {c.name} ({label} {interval_text(score, c.summary(score))}{seeds})"
        verdict = against_baseline(rec)
        if verdict is not None and not verdict[0]:
            which = "Best of them" if c is rec.best else f"The least {PREFER[rec.prefer][1]} of those tied"
            headline = (f"No trained method scores above the untrained baseline on {label} "
                        f"({format_value(score, rec.baseline.mean(score))}). {which}: {c.name} "
                        f"({interval_text(score, c.summary(score))}{seeds})")
        elif verdict is not None:
            details.append(verdict[1])
        if len(rec.ranking) > 2:
            details.append("Ranking: " + ", ".join(f"{i}. {g.name} {interval_text(score, g.summary(score))}"
                                                   for i, g in enumerate(rec.ranking, 1)))
        for cost, front in rec.fronts:
            details.append(f"Pareto front, {label} vs {metric(cost).label}: " + ", ".join(
                f"{g.name} ({_shown(cost, g.mean(cost), g)}, {interval_text(score, g.summary(score))})"
                for g in front))
    details += _choice_details(rec)
    for e in rec.exclusions:
        details.append(f"Excluded by {e.limit}: " + ", ".join(f"{name} ({value})" for name, value in e.excluded))
    if rec.unscored:
        details.append(f"Not considered, no {label} recorded: {', '.join(rec.unscored)}")
    if rec.unfinished:
        details.append("Not considered, did not finish: " +
                       ", ".join(f"{name} ({status})" for name, status in rec.unfinished))
    return Explanation(headline, reason(rec), details)


def _choice_details(rec: Recommendation) -> list[str]:
    """The rule that chose, the methods no test could compare with the best, and whether training noise is measured."""
    out = []
    label = metric(rec.metric).label
    if rec.choice is not None and rec.prefer != "score":
        out.append(f"Chosen as the least {PREFER[rec.prefer][1]} among the methods whose {label} is not "
                   f"significantly worse than the best (--prefer {rec.prefer}; --prefer score takes the best "
                   "score).")
    worse = [v for v in rec.versus if v.worse]
    if rec.choice is not None and worse:
        out.append(f"Significantly worse than {rec.best.name}: " +
                   ", ".join(f"{v.group.name} ({v.how})" for v in worse))
    untested = [v for v in rec.versus if v.worse is None]
    if untested:
        out.append(f"Not compared with {rec.best.name}, so not counted as tied: " +
                   ", ".join(f"{v.group.name} ({v.how})" for v in untested))
    if rec.one_seed:
        out.append(SEEDS_HINT)
    if any(TIME in headline.stand_ins(r.metrics) for g in rec.ranking for r in g.ok):
        out.append("Training times are steady state (warm-up steps left out); " + headline.WHOLE_RUN_NOTE)
    return out


def render_text(e: Explanation) -> str:
    return "\n".join([e.headline] + ([f"Why: {e.reason}"] if e.reason else []) + e.details) + "\n"


def cmd_recommend(args) -> int:
    from bench.core.records import RecordError, load_records

    try:
        def given(flag: str, parse, text: str | None):
            return None if text is None else _named(flag, parse, text)

        constraints = Constraints(
            max_memory=given("--max-memory", parse_size, args.max_memory),
            max_train_time=given("--max-train-time", parse_duration, args.max_train_time),
            max_adapter_size=given("--max-adapter-size", parse_size, args.max_adapter_size),
            min_scores=tuple(_named("--min-score", parse_min_score, t) for t in args.min_score or []),
            servable=given("--servable", check_stack, args.servable),
        )
        from bench.analysis.sweeps import selected

        records = selected(load_records(Path(args.results)))  # a sweep competes with its chosen value
        if not records:
            raise RecordError(f"{args.results}: no run records found")
        rec = recommend(records, constraints, args.metric, args.prefer)
    except (ValueError, RecordError) as e:
        print(e, file=sys.stderr)
        return 2
    sys.stdout.write(render_text(explain(rec)))
    return 0 if rec.choice is not None else 1


def _named(flag: str, parse, *args):
    """The parser's result; its error names the flag the bad value came with."""
    try:
        return parse(*args)
    except ValueError as e:
        raise ValueError(f"{flag}: {e}") from None
