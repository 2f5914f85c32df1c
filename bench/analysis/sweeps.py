"""Sweeps: each swept run's value is picked by validation loss (rows held out of train, never eval); pure functions."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from statistics import mean
from typing import Any

from bench.core.records import RunRecord


@dataclass
class Point:
    values: dict[str, Any]  # e.g. {"learning_rate": 0.001}
    records: list[RunRecord] = field(default_factory=list)  # one per seed

    @property
    def validation_loss(self) -> float | None:
        losses = [r.metrics["validation_loss"] for r in self.records
                  if r.status == "success" and "validation_loss" in r.metrics]
        return mean(losses) if losses and len(losses) == len(self.records) else None


@dataclass
class Sweep:
    group: str
    points: list[Point]

    @property
    def chosen(self) -> Point | None:
        """The point with the lowest mean validation loss; a point with any failed seed cannot win."""
        ok = [p for p in self.points if p.validation_loss is not None]
        return min(ok, key=lambda p: p.validation_loss) if ok else None


def sweeps(records: list[RunRecord]) -> list[Sweep]:
    """Swept runs grouped by name, points in the order first seen."""
    by_group: dict[str, dict[str, Point]] = {}
    for r in sorted(records, key=lambda r: r.started_at):
        values = r.config.sweep
        if not values:
            continue
        key = json.dumps(values, sort_keys=True)
        by_group.setdefault(r.config.group or r.run, {}).setdefault(key, Point(values)).records.append(r)
    return [Sweep(g, list(points.values())) for g, points in by_group.items()]


def selected(records: list[RunRecord]) -> list[RunRecord]:
    """The records a summary should show: unswept runs, and each sweep's chosen point only (every point of a sweep
    with no successful point, so its failures stay visible)."""
    drop = set()
    for s in sweeps(records):
        if s.chosen is not None:
            drop |= {id(r) for p in s.points if p is not s.chosen for r in p.records}
    return [r for r in records if id(r) not in drop]
