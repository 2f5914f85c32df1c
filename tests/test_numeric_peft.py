"""numeric_match_peft is PEFT's accuracy rule digit for digit: a table of answers where it and our numeric_match agree
and where they differ (thousands separators), checked against PEFT's own get_accuracy where its source is at hand."""

from __future__ import annotations

import ast
import os
from decimal import Decimal, DivisionByZero, InvalidOperation
from pathlib import Path
from typing import Optional

import pytest

from bench.core.scoring import per_example

# (prediction, reference, numeric_match, numeric_match_peft): expected values worked out from PEFT's
# MetaMathQA/utils.py (parse_answer, convert_to_decimal, get_accuracy) by reading it.
CASES = [
    ("The answer is: 1,430", "#### 1430", 1.0, 0.0),  # PEFT: '1,430' is no Decimal, so text against 1430.0
    ("The answer is: 1,000,000", "#### 1000000", 1.0, 0.0),
    ("The answer is: 12,000.50", "#### 12000.5", 1.0, 0.0),
    ("The answer is: $1,200", "#### 1200", 1.0, 0.0),
    ("The answer is: 1,430", "#### 1,430", 1.0, 1.0),  # text equal to text
    ("The answer is: 1430", "#### 1430", 1.0, 1.0),
    ("The answer is: 3/4", "#### 0.75", 1.0, 1.0),
    ("The answer is: 20/35", "#### 0.5714285714285714", 1.0, 1.0),  # equal as floats, as PEFT compares
    ("The answer is: $5", "#### 5", 1.0, 1.0),  # '$' and '%' at the ends go at extraction
    ("The answer is: 50%", "#### 50", 1.0, 1.0),
    ("The answer is: -3", "#### -3.0", 1.0, 1.0),
    ("The answer is: five", "#### 5", 0.0, 0.0),
    ("The answer is: 5 apples", "#### 5", 0.0, 0.0),
    ("The answer is: 2,5", "#### 2,5", 1.0, 1.0),
    ("The answer is: 1/0", "#### 1/0", 1.0, 1.0),  # no number on either side: equal as text
    ("no answer here", "#### 3", 0.0, 0.0),
]


def test_ours_and_peft_rule_on_the_table():
    preds, refs = [c[0] for c in CASES], [c[1] for c in CASES]
    got = per_example(["numeric_match", "numeric_match_peft"], preds, refs, "answer_delimiters")
    assert got["numeric_match"] == [c[2] for c in CASES]
    assert got["numeric_match_peft"] == [c[3] for c in CASES]
    differ = [c[0] for c in CASES if c[2] != c[3]]
    assert differ == [c[0] for c in CASES[:4]]  # only thousands separators part the two rules


def _peft_functions(path: Path) -> dict:
    """PEFT's parse_answer, convert_to_decimal and get_accuracy, taken from its file (which imports torch and
    datasets at the top) without running the rest of it."""
    tree = ast.parse(path.read_text())
    wanted = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in
              ("parse_answer", "convert_to_decimal", "get_accuracy")]
    namespace = {"Decimal": Decimal, "DivisionByZero": DivisionByZero, "InvalidOperation": InvalidOperation,
                 "Optional": Optional}
    exec(compile(ast.Module(wanted, []), str(path), "exec"), namespace)  # noqa: S102 - PEFT's own code, read-only
    return namespace


PEFT_UTILS = Path(os.environ.get("PEFT_SOURCE", "/work/peft")) / "method_comparison" / "MetaMathQA" / "utils.py"


@pytest.mark.skipif(not PEFT_UTILS.exists(), reason="PEFT's method_comparison source is not at hand (PEFT_SOURCE)")
def test_the_table_against_peft_s_own_code():
    peft = _peft_functions(PEFT_UTILS)
    for pred, ref, _, expected in CASES:
        assert peft["get_accuracy"](predictions=[pred], responses=[ref]) == expected, (pred, ref)
    ours = per_example(["numeric_match_peft"], [c[0] for c in CASES], [c[1] for c in CASES], "answer_delimiters")
    assert sum(ours["numeric_match_peft"]) / len(CASES) == peft["get_accuracy"](
        predictions=[c[0] for c in CASES], responses=[c[1] for c in CASES])
