"""Choosing a method: `python -m bench recommend RESULTS [--max-memory 8GB] [--max-train-time 1h] ...`.

The best finished method under the given limits, the Pareto fronts of its score against peak memory and train
time, and why, in words, against the runner-up. Pure functions over records; the reports' Recommendation section
is built by the same `recommend` and `explain`. Limits apply to the mean over seeds; exit 1 when no method meets
them (saying which limit excluded which method), 2 on bad input.
"""

from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from bench.config import BASELINE
from bench.metrics import format_value, metric
from bench.records import RunRecord
from bench.rows import Group, interval_text, score_names, seed_groups
from bench.stats import metric_front, welch
from bench.util import did_you_mean

MEMORY, TIME = "peak_memory_bytes", "train_seconds"
FRONTS = (MEMORY, TIME)  # the costs the fronts are drawn against
SAME = 1.05  # costs within 5% of each other are "about the same": peak memory and time repeat to a few percent

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


def _shown(name: str, value: float) -> str:
    if name == TIME:  # the reports' one decimal makes 0.16 s and 0.24 s both "0.2"
        return f"{value:.2f} s" if value < 10 else f"{value:.0f} s"
    return format_value("adapter_bytes" if name == "saved_bytes" else name, value)


@dataclass(frozen=True)
class Exclusion:
    limit: str  # the flag, e.g. "--max-memory 8.0 GB"
    excluded: list[tuple[str, str]]  # (method, its value as printed, or "not recorded")


@dataclass(frozen=True)
class Recommendation:
    metric: str
    ranking: list[Group]  # the methods that meet every limit, best first
    fronts: list[tuple[str, list[Group]]]  # (cost metric, the Pareto front among the ranked methods)
    exclusions: list[Exclusion] = field(default_factory=list)
    unfinished: list[tuple[str, str]] = field(default_factory=list)  # (method, status): some seed did not finish
    unscored: list[str] = field(default_factory=list)  # finished without the score (evaluation turned off)
    constrained: bool = False
    baseline: Group | None = None  # the untrained model, with the score

    @property
    def choice(self) -> Group | None:
        return self.ranking[0] if self.ranking else None

    @property
    def runner_up(self) -> Group | None:
        return self.ranking[1] if len(self.ranking) > 1 else None


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


def recommend(records: list[RunRecord], constraints: Constraints = Constraints(), score: str | None = None
              ) -> Recommendation:
    """Rank the finished trained methods that meet every limit; the baseline is the untrained reference, no
    candidate. A method counts only when every one of its seeds finished."""
    score = _named("--metric", check_metric, records, score)
    for name, _ in constraints.min_scores:
        _named("--min-score", check_metric, records, name)
    trained = [g for g in seed_groups(records) if g.method != BASELINE]
    unfinished = [(g.name, g.status + (f" on {len(g.records) - len(g.ok)} of {len(g.records)} seeds"
                                       if g.seeded else "")) for g in trained if g.status != "success"]
    finished = [g for g in trained if g.status == "success"]
    unscored = [g.name for g in finished if g.mean(score) is None]  # a run with eval turned off: cost only
    eligible = [g for g in finished if g.name not in unscored]
    exclusions = []
    for flag, name, limit, better in _limits(constraints):
        out = []
        for g in finished:
            v = _value(g, name)
            if v is None:
                out.append((g.name, "not recorded"))
            elif v > limit if better == "lower" else v < limit:
                out.append((g.name, _shown(name, v)))
        if out:
            exclusions.append(Exclusion(flag, out))
        gone = {n for n, _ in out}
        eligible = [g for g in eligible if g.name not in gone]
    ranking = sorted(eligible, key=lambda g: rank_key(g, score))
    fronts = []
    for cost in FRONTS:
        pts = [(g.mean(cost), g.mean(score), g) for g in ranking if g.mean(cost) is not None]
        if pts:
            fronts.append((cost, [p[2] for p in metric_front(pts, cost, score)]))
    base = next((g for g in seed_groups(records) if g.method == BASELINE and g.ok and g.mean(score) is not None),
                None)
    return Recommendation(score, ranking, fronts, exclusions, unfinished, unscored, bool(_limits(constraints)), base)


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
    if d.supported is not None:
        text += ", a gap the seeds support" if d.supported else ", a gap the seeds do not support (Welch's t-test)"
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
        values = f"{_shown(name, vc)} vs {_shown(name, vr)}"
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
    """Why the choice, in a few plain sentences: its score against the runner-up's, and whether the seeds support
    the difference; then what it gains and gives up in memory, time and size against the runner-up."""
    c, r, score = rec.choice, rec.runner_up, rec.metric
    if c is None:
        return None
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
        if d.supported is None:
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
            headline = (f"No trained method scores above the untrained baseline on {label} "
                        f"({format_value(score, rec.baseline.mean(score))}). Best of them: {c.name} "
                        f"({interval_text(score, c.summary(score))}{seeds})")
        elif verdict is not None:
            details.append(verdict[1])
        if len(rec.ranking) > 2:
            details.append("Ranking: " + ", ".join(f"{i}. {g.name} {interval_text(score, g.summary(score))}"
                                                   for i, g in enumerate(rec.ranking, 1)))
        for cost, front in rec.fronts:
            details.append(f"Pareto front, {label} vs {metric(cost).label}: " + ", ".join(
                f"{g.name} ({_shown(cost, g.mean(cost))}, {interval_text(score, g.summary(score))})"
                for g in front))
    for e in rec.exclusions:
        details.append(f"Excluded by {e.limit}: " + ", ".join(f"{name} ({value})" for name, value in e.excluded))
    if rec.unscored:
        details.append(f"Not considered, no {label} recorded: {', '.join(rec.unscored)}")
    if rec.unfinished:
        details.append("Not considered, did not finish: " +
                       ", ".join(f"{name} ({status})" for name, status in rec.unfinished))
    return Explanation(headline, reason(rec), details)


def render_text(e: Explanation) -> str:
    return "\n".join([e.headline] + ([f"Why: {e.reason}"] if e.reason else []) + e.details) + "\n"


def cmd_recommend(args) -> int:
    from bench.records import RecordError, load_records

    try:
        def given(flag: str, parse, text: str | None):
            return None if text is None else _named(flag, parse, text)

        constraints = Constraints(
            max_memory=given("--max-memory", parse_size, args.max_memory),
            max_train_time=given("--max-train-time", parse_duration, args.max_train_time),
            max_adapter_size=given("--max-adapter-size", parse_size, args.max_adapter_size),
            min_scores=tuple(_named("--min-score", parse_min_score, t) for t in args.min_score or []),
        )
        from bench.sweeps import selected

        records = selected(load_records(Path(args.results)))  # a sweep competes with its chosen value
        if not records:
            raise RecordError(f"{args.results}: no run records found")
        rec = recommend(records, constraints, args.metric)
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
