"""Generate the project's task data deterministically: `python scripts/make_data.py` rewrites data/*.jsonl and
data/lm_eval/trips_city.jsonl.

The task, "trip extraction": read one sentence about a trip and answer `name | city | day`, where city is the
destination (half the sentences also name the origin city, as a distractor). A small chat model answers in prose
and often picks the wrong city, so its untrained exact match is near zero; a few dozen optimiser steps of LoRA
teach the format and the destination rule, so methods separate within a CPU-minutes budget.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

NAMES = [
    "Anna", "Ben", "Carla", "David", "Elena", "Farid", "Grace", "Hugo", "Ines", "Jonas", "Kenji", "Lena", "Marco",
    "Nadia", "Omar", "Priya", "Quentin", "Rosa", "Samir", "Tara", "Umar", "Vera", "Wes", "Xenia", "Yusuf", "Zoe",
    "Amira", "Bruno", "Chloe", "Dmitri", "Emma", "Felix", "Hana", "Ivan", "Julia", "Liam", "Mia", "Noah", "Olga",
    "Pablo",
]
CITIES = [
    "Paris", "Berlin", "Madrid", "Rome", "Vienna", "Prague", "Lisbon", "Dublin", "Oslo", "Warsaw", "Athens",
    "Cairo", "Nairobi", "Lagos", "Tokyo", "Seoul", "Delhi", "Bangkok", "Sydney", "Toronto", "Chicago", "Boston",
    "Denver", "Lima", "Bogota", "Santiago", "Havana", "Montreal", "Helsinki", "Zurich", "Munich", "Milan",
    "Porto", "Seville", "Krakow", "Budapest", "Istanbul", "Dubai", "Mumbai", "Manila",
]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
PLAIN = [
    "On {day}, {name} flew to {city} for a conference.",
    "{name} is taking the train to {city} on {day}.",
    "Next {day} {name} will drive to {city} to see family.",
    "{name} booked a flight to {city} leaving {day} morning.",
    "The team sent {name} to {city}; the trip starts on {day}.",
    "{name} arrives in {city} on {day} after a long journey.",
]
WITH_ORIGIN = [
    "{name} leaves {origin} on {day} and flies to {city}.",
    "On {day}, {name} travels from {origin} to {city} by bus.",
    "After a week in {origin}, {name} heads to {city} on {day}.",
    "{name} will fly out of {origin} on {day}, landing in {city} that evening.",
    "From {origin}, {name} takes the night train to {city} on {day}.",
    "{name} changes planes in {origin} on {day} on the way to {city}.",
]
INSTRUCTION = (
    "Extract the traveller, the destination city and the day from the sentence. "
    "Answer exactly as: name | city | day\nSentence: {sentence}"
)


def example(rng: random.Random) -> dict[str, str]:
    name, day = rng.choice(NAMES), rng.choice(DAYS)
    city, origin = rng.sample(CITIES, 2)
    template = rng.choice(PLAIN if rng.random() < 0.5 else WITH_ORIGIN)
    sentence = template.format(name=name, city=city, origin=origin, day=day)
    return {"prompt": INSTRUCTION.format(sentence=sentence), "response": f"{name} | {city} | {day}"}


def city_choice(n: int, seed: int) -> list[dict]:
    """The lm-eval task's rows (data/lm_eval/): a trip sentence, the destination and one other city as choices."""
    rng, rows = random.Random(seed), []
    for _ in range(n):
        name, day = rng.choice(NAMES), rng.choice(DAYS)
        city, origin = rng.sample(CITIES, 2)
        sentence = rng.choice(WITH_ORIGIN).format(name=name, city=city, origin=origin, day=day)
        label = rng.randrange(2)
        choices = [city, origin] if label == 0 else [origin, city]
        rows.append({"sentence": sentence, "choices": choices, "label": label, "answer": city})
    return rows


def generate(n: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    seen, rows = set(), []
    while len(rows) < n:
        row = example(rng)
        if row["prompt"] not in seen:
            seen.add(row["prompt"])
            rows.append(row)
    return rows


def write(path: Path, rows: list[dict[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    root = Path(__file__).resolve().parent.parent / "data"
    write(root / "trips.jsonl", generate(600, seed=1))
    write(root / "smoke.jsonl", generate(48, seed=2))
    write(root / "lm_eval" / "trips_city.jsonl", city_choice(24, seed=3))
    print(f"wrote {root / 'trips.jsonl'} (600 rows), {root / 'smoke.jsonl'} (48 rows) and "
          f"{root / 'lm_eval' / 'trips_city.jsonl'} (24 rows)")
