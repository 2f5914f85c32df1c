"""Answer scoring, offline: plain functions behind one registry, plus `hub:NAME` for `evaluate` metrics online."""

from __future__ import annotations

import re
import string
from collections import Counter
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


SCORERS: dict[str, Callable[[str, str], float]] = {
    "exact_match": exact_match,
    "token_f1": token_f1,
    "rouge_l": rouge_l,
}


def extract(text: str, pattern: str | None) -> str:
    """The suite's answer extraction: the first group of `pattern`, or the whole text stripped."""
    if pattern is None:
        return text.strip()
    match = re.search(pattern, text, flags=re.DOTALL)
    return match.group(1).strip() if match else ""


def score(names: list[str], predictions: list[str], references: list[str], pattern: str | None) -> dict[str, float]:
    """Mean of each metric over the examples, on extracted answers."""
    preds = [extract(p, pattern) for p in predictions]
    refs = [extract(r, pattern) if pattern else r.strip() for r in references]
    out = {}
    for name in names:
        if name.startswith("hub:"):
            import evaluate  # online only: evaluate.load fetches the metric script from the Hub

            result = evaluate.load(name[4:]).compute(predictions=preds, references=refs)
            out.update({f"{name[4:]}_{k}" if k != name[4:] else k: float(v) for k, v in result.items()
                        if isinstance(v, (int, float))})
        else:
            fn = SCORERS[name]
            out[name] = sum(fn(p, r) for p, r in zip(preds, refs)) / max(len(preds), 1)
    return out
