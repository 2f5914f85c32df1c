"""Answer scoring, offline: plain functions behind one registry, plus `hub:NAME` for `evaluate` metrics online."""

from __future__ import annotations

import functools
import re
import string
from collections import Counter
from decimal import Decimal, InvalidOperation
from typing import Callable

_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize(text: str) -> str:
    """SQuAD-style normalisation: lower case, no punctuation, no articles, single spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize(prediction) == normalize(reference))


def token_f1(prediction: str, reference: str) -> float:
    pred, ref = normalize(prediction).split(), normalize(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def _lcs(a: list[str], b: list[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 over whitespace tokens of the lower-cased text (what rouge_score computes without stemming)."""
    pred = re.findall(r"\w+", prediction.lower())
    ref = re.findall(r"\w+", reference.lower())
    if not pred or not ref:
        return float(pred == ref)
    lcs = _lcs(pred, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


_THOUSANDS = re.compile(r"[-+]?\d{1,3}(,\d{3})+(\.\d+)?")


def number(text: str | None) -> Decimal | None:
    """A number as maths answers write it, or None: 18, 18.0, -3, $18, 1,000, 50%, 3/4 (% is dropped, not divided:
    GSM8K writes 50% as 50, as PEFT's benchmark notes)."""
    if text is None:
        return None
    s = text.strip().strip(" .!?").removeprefix("$").removesuffix("%").strip()
    if _THOUSANDS.fullmatch(s):
        s = s.replace(",", "")
    numerator, slash, denominator = s.partition("/")
    try:
        value = Decimal(numerator.strip().removeprefix("$"))
        if slash:
            below = Decimal(denominator.strip())
            value = value / below if below != 0 else Decimal("NaN")
    except InvalidOperation:
        return None
    return value if value.is_finite() else None


def numeric_match(prediction: str, reference: str) -> float:
    """Equal as numbers (compared as floats, as PEFT's benchmark does, so 20/35 equals 0.5714285714285714);
    answers that are not numbers are compared as text."""
    a, b = number(prediction), number(reference)
    if a is None or b is None:
        return float(prediction.strip() == reference.strip())
    return float(float(a) == float(b))


def peft_decimal(text: str) -> Decimal | None:
    """A number as PEFT's benchmark reads one (method_comparison/MetaMathQA/utils.py, convert_to_decimal): the text as
    a Decimal, or one '/' between two Decimals; nothing else. Unlike `number`, "1,430", "$5" and "50%" are not
    numbers here (PEFT's parse_answer has already stripped a '$' or '%' at either end)."""
    s = text.strip()
    try:
        if "/" not in s:
            return Decimal(s)
        parts = s.split("/")
        if len(parts) != 2 or Decimal(parts[1].strip()) == 0:
            return None
        return Decimal(parts[0].strip()) / Decimal(parts[1].strip())
    except (InvalidOperation, ValueError):
        return None


def numeric_match_peft(prediction: str, reference: str) -> float:
    """PEFT's accuracy rule (MetaMathQA/utils.py, get_accuracy), digit for digit: both sides as floats where
    `peft_decimal` reads them, else as text, and right only when equal; so a number with thousands separators is
    text and never equals a plain number ("1,430" against "1430" is wrong here, right for numeric_match). Use it
    where scores must compare with PEFT's published accuracy; numeric_match stays the default."""
    a, b = peft_decimal(prediction), peft_decimal(reference)
    return float((prediction if a is None else float(a)) == (reference if b is None else float(b)))


SCORERS: dict[str, Callable[[str, str], float]] = {
    "exact_match": exact_match,
    "token_f1": token_f1,
    "rouge_l": rouge_l,
    "numeric_match": numeric_match,
    "numeric_match_peft": numeric_match_peft,
}

_NUMBER = re.compile(r"[-+]?\$?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s*/\s*\d+)?%?")


def last_number(text: str) -> str | None:
    """The last number in the text (with its $, %, thousands separators or fraction bar)."""
    found = _NUMBER.findall(text)
    return found[-1] if found else None


# PEFT's benchmark (method_comparison/MetaMathQA/utils.py, parse_answer): MetaMath's and GSM8K's answer markers.
DELIMITERS = ("The answer is: ", "The answer is ", "The final answer is: ", "The final answer is ", "#### ")


def answer_delimiters(text: str) -> str | None:
    """The answer after an answer marker, as PEFT's benchmark parses: the first of DELIMITERS the text holds, its
    last occurrence, up to the end of that line, without surrounding spaces, '.!?', '$' and '%'."""
    text = text.strip().rstrip(".!?")
    marker = next((d for d in DELIMITERS if d in text), None)
    if marker is None:
        return None
    return text.rpartition(marker)[2].strip().split("\n", 1)[0].strip(" .!?$%")


EXTRACTORS: dict[str, Callable[[str], str | None]] = {
    "last_number": last_number,
    "answer_delimiters": answer_delimiters,
}


# A suite's regex is matched by the `regex` package with a time limit: a pattern that backtracks catastrophically
# (`(a|aa)+$` on a long run of a's) is an error naming eval.extract, never a scoring loop that does not end.
MATCH_TIMEOUT_S = 2.0
_PROBE_TIMEOUT_S = 0.1
_PROBE_LENGTH = 512


class PatternTimeout(ValueError):
    """A suite's regex did not finish on a text within MATCH_TIMEOUT_S."""


@functools.lru_cache(maxsize=64)
def compile_pattern(pattern: str):
    """The suite's regex as scoring matches it (regex.error when it is not one)."""
    import regex

    return regex.compile(pattern, flags=regex.DOTALL)


def _probes(pattern: str) -> list[str]:
    """Texts on which a backtracking pattern shows itself: one character, or two of the pattern's own, repeated,
    then a character nothing in the pattern expects (so every way of splitting the run is tried before failing)."""
    own = sorted({c for c in pattern if c.isprintable() and c not in "\\()[]{}|*+?^$."})
    units = [c for c in string.printable[:95]] + [a + b for a in own for b in own if a != b]
    return [u * (_PROBE_LENGTH // len(u)) + "\x00" for u in units]


def backtracking(pattern: str) -> str | None:
    """Why the regex would hang scoring (a probe text it did not finish within a fraction of a second), or None."""
    compiled = compile_pattern(pattern)
    for text in _probes(pattern):
        try:
            compiled.search(text, timeout=_PROBE_TIMEOUT_S)
        except TimeoutError:
            return (f"it backtracks catastrophically: on {text[:8]!r}... ({len(text)} characters) it did not finish "
                    f"within {_PROBE_TIMEOUT_S} s; avoid nested or overlapping repeats such as (a|aa)+ or (a+)+")
    return None


def pattern_problem(pattern: str) -> str | None:
    """What is wrong with a suite's eval.extract, or None: a preset, or a regex with a group for the answer that
    cannot hang scoring. The message of a regex that does not compile is stdlib re's (the `regex` package accepts a
    superset)."""
    import regex

    if pattern in EXTRACTORS:
        return None
    try:
        re.compile(pattern)
        compiled = compile_pattern(pattern)
    except (re.error, regex.error) as e:
        return f"not a valid regex: {e}"
    if compiled.groups < 1:
        return f"the regex needs one group (the answer), e.g. '#### (.+)'; or a preset: {', '.join(EXTRACTORS)}"
    return backtracking(pattern)


def extract(text: str, pattern: str | None) -> str | None:
    """The suite's answer extraction: a preset of EXTRACTORS, or the first group of the regex `pattern` (None when
    the text has no answer), or the whole text stripped."""
    if pattern is None:
        return text.strip()
    if pattern in EXTRACTORS:
        return EXTRACTORS[pattern](text)
    try:
        match = compile_pattern(pattern).search(text, timeout=MATCH_TIMEOUT_S)
    except TimeoutError:
        raise PatternTimeout(f"eval.extract: the regex {pattern!r} did not finish within {MATCH_TIMEOUT_S} s on a text "
                             f"of {len(text)} characters (catastrophic backtracking); simplify it") from None
    return match.group(1).strip() if match else None


def per_example(names: list[str], predictions: list[str], references: list[str],
                pattern: str | None) -> dict[str, list[float]]:
    """Each offline metric per example, on extracted answers. A prediction with no match is wrong on every metric;
    references must match (bench.datasets.examples.check_references says so at load, with the row)."""
    preds = [extract(p, pattern) for p in predictions]
    refs = [extract(r, pattern) for r in references]
    if None in refs:
        raise ValueError(f"reference {references[refs.index(None)]!r} has no match for eval.extract {pattern!r}")
    return {name: [0.0 if p is None else SCORERS[name](p, r) for p, r in zip(preds, refs)]
            for name in names if not name.startswith("hub:")}


def score(names: list[str], predictions: list[str], references: list[str], pattern: str | None) -> dict[str, float]:
    """Mean of each metric over the examples, on extracted answers."""
    out = {name: sum(values) / max(len(values), 1)
           for name, values in per_example(names, predictions, references, pattern).items()}
    for name in names:
        if name.startswith("hub:"):
            import evaluate  # online only: evaluate.load fetches the metric script from the Hub

            preds = [extract(p, pattern) or "" for p in predictions]
            refs = [extract(r, pattern) for r in references]
            result = evaluate.load(name[4:]).compute(predictions=preds, references=refs)
            out.update({f"{name[4:]}_{k}" if k != name[4:] else k: float(v) for k, v in result.items()
                        if isinstance(v, (int, float))})
    return out


LEVEL = 0.95


def interval(values: list[float], level: float = LEVEL) -> tuple[float, float, str]:
    """The interval of a mean score over eval examples: Wilson's for a proportion (every value 0 or 1, as exact
    match), a bootstrap percentile interval otherwise (token F1, ROUGE-L); both from SciPy."""
    import numpy as np
    import scipy.stats

    if all(v in (0.0, 1.0) for v in values):
        ci = scipy.stats.binomtest(int(sum(values)), len(values)).proportion_ci(level, method="wilson")
        return float(ci.low), float(ci.high), "wilson"
    data = np.asarray(values, dtype=float)
    if np.all(data == data[0]):
        return float(data[0]), float(data[0]), "bootstrap"
    boot = scipy.stats.bootstrap((data,), np.mean, confidence_level=level, n_resamples=2000, method="percentile",
                                 random_state=np.random.default_rng(0))
    return float(boot.confidence_interval.low), float(boot.confidence_interval.high), "bootstrap"
