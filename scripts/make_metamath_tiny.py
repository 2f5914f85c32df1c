"""Make the tiny offline stand-in for PEFT's MetaMathQA benchmark: `python scripts/make_metamath_tiny.py` rewrites
data/metamath-tiny/ (deterministic, committed).

Handmade arithmetic word problems in the shapes of the real data, not samples of it: metamath.jsonl has
MetaMathQA's columns (query, response ending "The answer is: N", type, original_question), gsm8k_train.jsonl and
gsm8k_test.jsonl GSM8K's (question, answer ending "#### N"). A few MetaMath rows are longer than 1300 characters so
dataset.max_chars has rows to filter, and some answers are written $N, N% or with thousands separators, so the
answer parsing meets them. suites/metamath-tiny.yaml runs on these with the smoke model; suites/metamath.yaml is
the real benchmark (Hub data, a GPU).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

NAMES = ["Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goran", "Hiro", "Ines", "Jamal", "Kofi", "Lina"]
ITEMS = ["apples", "books", "stamps", "marbles", "tickets", "pencils", "shells", "cards"]


def problem(rng: random.Random) -> tuple[str, list[str], str]:
    """A question, its reasoning steps and the answer as the data would write it."""
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    kind = rng.randrange(4)
    a, b = rng.randint(2, 40), rng.randint(2, 40)
    if kind == 0:
        q = f"{name} has {a} {item} and buys {b} more. How many {item} does {name} have now?"
        return q, [f"{name} starts with {a} {item}.", f"{a} + {b} = {a + b}."], str(a + b)
    if kind == 1:
        price = rng.randint(2, 9)
        q = f"{name} sells {a} {item} at ${price} each. How much money does {name} make?"
        return q, [f"Each sells for ${price}.", f"{a} * {price} = {a * price}."], f"${a * price}"
    if kind == 2:
        total = a * 100 + b * 10
        q = f"A shop has {a * 100} {item} and orders {b * 10} more, then {total * 9} more. How many are there?"
        n = total * 10
        return q, [f"{a * 100} + {b * 10} = {total}.", f"{total} + {total * 9} = {n}."], f"{n:,}"
    pct = rng.choice([10, 20, 25, 50])
    q = f"{name} answered {pct} out of 100 questions right. What percent did {name} get right?"
    return q, [f"{pct} / 100 = {pct / 100}.", f"That is {pct} percent."], f"{pct}%"


def metamath(n: int, seed: int) -> list[dict[str, str]]:
    rng, rows, seen = random.Random(seed), [], set()
    while len(rows) < n:
        q, steps, answer = problem(rng)
        if q in seen:
            continue
        seen.add(q)
        if len(rows) % 10 == 9:
            steps = steps * 40  # longer than PEFT's 1300-character limit
        rows.append({"query": q, "response": " ".join(steps) + f" The answer is: {answer}",
                     "type": rng.choice(["GSM_Rephrased", "GSM_AnsAug", "GSM_SV"]), "original_question": q})
    return rows


def gsm8k(n: int, seed: int) -> list[dict[str, str]]:
    rng, rows, seen = random.Random(seed), [], set()
    while len(rows) < n:
        q, steps, answer = problem(rng)
        if q in seen:
            continue
        seen.add(q)
        rows.append({"question": q, "answer": "\n".join(steps) + f"\n#### {answer.strip('$%').replace(',', '')}"})
    return rows


def write(path: Path, rows: list[dict[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    root = Path(__file__).resolve().parent.parent / "data" / "metamath-tiny"
    write(root / "metamath.jsonl", metamath(60, seed=0))
    write(root / "gsm8k_train.jsonl", gsm8k(20, seed=1))
    write(root / "gsm8k_test.jsonl", gsm8k(12, seed=2))
    print(f"wrote {root}/metamath.jsonl (60 rows), gsm8k_train.jsonl (20) and gsm8k_test.jsonl (12)")
