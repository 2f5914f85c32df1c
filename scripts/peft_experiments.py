"""Every experiment PEFT's own benchmark publishes, through the harness: import, validate, plan, train, and check that
`bench plan`'s counts are what each run trained.

Run: python scripts/peft_experiments.py PEFT_CHECKOUT [--out DIR] [--max-steps 3] [--model llama-3.2-3b-mini]
     [--only METHOD...]
PEFT_CHECKOUT is a clone of huggingface/peft (or `fetch`'s copy checked out); its
method_comparison/MetaMathQA/experiments/*/* are imported with `bench import-peft` into DIR/suite.yaml (default DIR:
results/peft-experiments-check). Experiments `validate` refuses on this model are left out of the run, each printed
with its reason; the rest run as one suite (resumable: run it again to finish), then each record is compared with
its `bench plan --json` row. A slow check (about 50 minutes on a 2-core CPU for all 71), not a test.
Exit 1 if an experiment fails to validate, a run fails, or a count differs; 0 otherwise.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def bench(*args: str, capture: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=ROOT, text=True, capture_output=capture)


def valid_runs(suite: Path) -> tuple[list[dict], dict[int, str]]:
    """The suite's runs and, by index, why validate refuses each of those it refuses."""
    from ruamel.yaml import YAML

    from bench.spec.suite import load_suite
    from bench.core.yamlio import SuiteError

    runs = YAML(typ="safe").load(suite.read_text())["runs"]
    try:
        load_suite(suite)
        return runs, {}
    except SuiteError as e:
        refused: dict[int, str] = {}
        for problem in e.problems:
            found = re.search(r"runs\[(\d+)\]", problem)
            if found is None:
                raise  # a problem of the suite as a whole: not this script's to work around
            refused.setdefault(int(found.group(1)), problem)
        return runs, refused


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("peft", type=Path)
    p.add_argument("--out", type=Path, default=ROOT / "results" / "peft-experiments-check")
    p.add_argument("--max-steps", default="3")
    p.add_argument("--model", default="llama-3.2-3b-mini")
    p.add_argument("--only", nargs="+", metavar="METHOD", help="only these experiment folders (PEFT's method names)")
    args = p.parse_args()
    experiments = args.peft / "method_comparison" / "MetaMathQA" / "experiments"
    folders = sorted(f for f in experiments.glob("*/*") if f.is_dir() and (not args.only or f.parent.name in args.only))
    if not folders:
        sys.exit(f"no experiment folders under {experiments}")
    args.out.mkdir(parents=True, exist_ok=True)
    suite = args.out / "suite.yaml"
    done = bench("import-peft", *map(str, folders), "--out", str(suite), "--model", args.model,
                 "--max-steps", args.max_steps, "--data", str(ROOT / "data" / "smoke.jsonl"))
    if done.returncode:
        sys.exit(done.stderr)
    print(done.stderr, end="")  # what import-peft does not take over
    runs, refused = valid_runs(suite)
    for i, why in sorted(refused.items()):
        print(f"refused: {runs[i]['name']}: {why}")
    if refused:
        from ruamel.yaml import YAML

        yaml = YAML()
        doc = yaml.load(suite.read_text())
        doc["runs"] = [r for i, r in enumerate(doc["runs"]) if i not in refused]
        with suite.open("w") as f:
            yaml.dump(doc, f)
    plan = {row["run"]: row for row in map(json.loads, bench("plan", str(suite), "--json").stdout.splitlines())}
    bench("run", str(suite), "--output", str(args.out / "results"), capture=False)
    statuses, differ, merges = Counter(), [], Counter()
    for run, row in plan.items():
        path = args.out / "results" / f"{run}.json"
        record = json.loads(path.read_text()) if path.is_file() else {"status": "missing", "metrics": {}}
        statuses[record["status"]] += 1
        if record["status"] != "success":
            print(f"{record['status']}: {run}: {(record.get('error') or '').strip().splitlines()[-1:]}")
            continue
        merges[(record.get("merge") or {}).get("status", "-")] += 1
        m = record["metrics"]
        if (row["trainable_params"], row["total_params"]) != (m["trainable_params"], m["total_params"]):
            differ.append(f"{run}: plan {row['trainable_params']}/{row['total_params']}, trained "
                          f"{m['trainable_params']}/{m['total_params']}")
    for d in differ:
        print(f"plan differs: {d}")
    print(f"{len(folders)} experiments: {len(refused)} refused by validate; runs (baseline included) "
          f"{dict(statuses)}; merges {dict(merges)}; plan's counts equal the record's for "
          f"{statuses['success'] - len(differ)} of {statuses['success']} successful runs")
    return 1 if refused or differ or set(statuses) != {"success"} else 0


if __name__ == "__main__":
    sys.exit(main())
