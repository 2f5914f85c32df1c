"""`bench run SUITE --seeds N`: the suite over N seeds, its own first, so a finished single-seed run gains the seeds
that measure training noise and only the missing ones run.

A suite without `seeds` ran every entry once, at its training seed, under the entry's plain name. That run computed
exactly what the entry's run at that seed computes, so its record is adopted as that seed (renamed NAME@seedS, its
run folder with it) instead of being run again; the original record moves to history/, as a replaced record does.
"""

from __future__ import annotations

import os
from pathlib import Path

from bench.core.config import RunConfig
from bench.core.layout import run_path
from bench.core.records import RecordError, read_record, record_path
from bench.launch.runner import _keep_previous, store  # the runner's own move of a replaced record to history/


def seeds_for(have: list[int] | None, first: int, n: int) -> list[int]:
    """N seeds: the suite's own (or the training seed it ran at), then the next integers not taken."""
    seeds = list(have) if have else [first]
    if n < len(seeds):
        raise ValueError(f"--seeds {n}: the suite already runs over {len(seeds)} seeds ({', '.join(map(str, seeds))});"
                         " --seeds adds seeds, it never drops one")
    nxt = seeds[-1] + 1
    while len(seeds) < n:
        if nxt not in seeds:
            seeds.append(nxt)
        nxt += 1
    return seeds


def adopt_unseeded(configs: list[RunConfig], out_dir: Path) -> list[str]:
    """Adopt each finished record from before the suite had seeds as the seed it ran at; one line per adoption."""
    said = []
    for cfg in configs:
        if cfg.seed is None or record_path(out_dir, cfg.run).exists():
            continue
        plain = cfg.run.rpartition("@seed")[0]
        try:
            old = read_record(record_path(out_dir, plain))
        except (RecordError, OSError):
            continue
        if not old.ok or old.config.seed is not None:
            continue
        same = old.config.model_copy(update={"run": cfg.run, "group": cfg.group, "seed": cfg.seed}).hashed()
        if same.config_hash != cfg.config_hash:
            continue  # another config, or another training seed: this seed has to run
        store(out_dir, old.model_copy(update={"run": cfg.run, "config": cfg, "config_hash": cfg.config_hash}))
        _keep_previous(out_dir, plain)
        if run_path(out_dir, plain).is_dir():
            os.replace(run_path(out_dir, plain), run_path(out_dir, cfg.run))
        said.append(f"{cfg.run}: the record of {plain} ran this config at seed {cfg.seed}; adopted, not rerun")
    return said
