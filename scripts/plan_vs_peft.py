"""`bench plan`'s GPU memory prediction against PEFT's 63 published measurements (a slow check, not a test).

Run: python scripts/plan_vs_peft.py PEFT_CHECKOUT [--length N] [--json OUT]
Every stored result of PEFT's method_comparison (method_comparison/MetaMathQA/results/*.json) names its experiment;
each experiment is imported with bench.commands.peftimport and its memory predicted with PEFT's settings: Llama-3.2-3B's shape,
bf16 weights as loaded (no autocast, adapters upcast to fp32 by PEFT, full fine-tuning in bf16), batch 4, no gradient
checkpointing, the run's optimiser. The published figure (train_info.accelerator_memory_max) is torch's reserved peak
over the run less what was reserved at start, so it is compared with the predicted reserved peak (the CUDA context
is outside it).

The length of the longest batch PEFT's runs saw is not published (each batch is padded to its longest row, at most
768 tokens): it is ONE input for all 63 runs. Without --length it is fitted: predictions are made at two lengths,
each part interpolated linearly in between (every part is affine in the length when attention saves O(length), as
SDPA's kernels do), and the length with the smallest median absolute error is taken, then predicted directly.
Prints per run predicted vs published, the error, the distribution, Spearman's rank correlation, and the error of a
constant predictor at the published median.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
GIB = 2**30
LENGTHS = (384, 768)  # every part is predicted at both; in between, each is affine in the length
PARTS = ("base", "trainable", "gradients", "optimizer", "activations", "logits", "head_gradients")


def published(peft: Path) -> dict[str, tuple[Path, int]]:
    """Experiment folder and published accelerator_memory_max of every stored result, by experiment name."""
    out = {}
    for f in sorted((peft / "method_comparison/MetaMathQA/results").glob("*.json")):
        doc = json.loads(f.read_text())
        name = doc["run_info"]["experiment_name"]
        out[name] = (peft / "method_comparison/MetaMathQA/experiments" / name, doc["train_info"]["accelerator_memory_max"])
    return out


def run_configs(folders: list[Path]) -> list:
    """The experiments as resolved runs of a suite on Llama-3.2-3B's shape. Read without `validate`'s checks (each
    builds the PEFT model, minutes for 63 on a busy CPU): predict_at builds it anyway and says per run what fails."""
    from ruamel.yaml import YAML

    from bench.commands.peftimport import suite_of
    from bench.spec.suite import Suite, with_adapter_files
    from bench.core.yamlio import load_yaml, to_plain

    tmp = Path(tempfile.mkdtemp(prefix="plan-vs-peft-"))
    out = tmp / "suite.yaml"
    suite, _ = suite_of(folders, out, "llama-3.2-3b", str(ROOT / "data/smoke.jsonl"), max_steps=5000)
    suite["training"] |= {"batch_size": 4, "max_seq_len": 768, "precision": "bf16"}
    with out.open("w") as f:
        YAML().dump(suite, f)
    suite, _ = with_adapter_files(Suite(**to_plain(load_yaml(out)), source=str(out)))
    return suite.resolved_runs()


def predict_at(cfg, length: int):
    from bench.choose.memplan import Setting, predict
    from bench.run.models import PRESETS
    from methods import METHODS, RunFacts

    spec = cfg.training.optimizer
    setting = Setting(batch_size=4, seq_len=length, dtype="bf16", device="cuda", trainable_fp32=False,
                      autocast=False, optimizer=spec and spec.name,
                      optimizer_kwargs=json.dumps(spec.kwargs if spec else {}, sort_keys=True))
    return predict(PRESETS["llama-3.2-3b"], METHODS[cfg.method], cfg.params, setting,
                   RunFacts(total_steps=5000, special_token_ids=(128000, 128001)))


def reserved(parts: dict[str, float]) -> float:
    """The reserved peak from its parts, as bench.choose.memplan assembles it."""
    from bench.choose.memplan import ALLOCATOR_SHARE

    front = parts["activations"] + parts["logits"] + parts["head_gradients"]
    allocated = parts["base"] + parts["trainable"] + parts["optimizer"] + max(front, parts["gradients"])
    return allocated * (1 + ALLOCATOR_SHARE)


def interpolated(pair: tuple, length: int) -> float:
    """The reserved peak at `length` from the parts predicted at LENGTHS (each part affine in the length)."""
    a, b = pair
    w = (length - LENGTHS[0]) / (LENGTHS[1] - LENGTHS[0])
    return reserved({k: (1 - w) * getattr(a, k) + w * getattr(b, k) for k in PARTS})


def fit_length(preds: dict[str, tuple], truth: dict[str, int]) -> int:
    """The one length, on a 16-token grid, whose interpolated predictions have the smallest median |error|."""
    def median_error(length: int) -> float:
        return statistics.median(abs(interpolated(pair, length) / truth[n] - 1) for n, pair in preds.items())

    return min(range(128, 769, 16), key=median_error)


def leave_one_out(preds: dict[str, tuple], truth: dict[str, int]) -> dict[str, tuple[int, float]]:
    """Per run, the length fitted on every other run and the run's error at it: an out-of-sample check of the fit."""
    out = {}
    for name, pair in preds.items():
        length = fit_length({n: p for n, p in preds.items() if n != name}, truth)
        out[name] = (length, interpolated(pair, length) / truth[name] - 1)
    return out


def sized(names: list[str], configs: dict, truth: dict[str, int], progress: Path | None):
    """Each run's parts at both LENGTHS (read back from `progress` where an earlier pass sized it), and why a run
    could not be sized."""
    from types import SimpleNamespace

    two, failed = {}, {}
    done = [json.loads(line) for line in progress.read_text().splitlines()] if progress and progress.exists() else []
    for d in (d for d in done if d["experiment"] in names):
        if "failed" in d:
            failed[d["experiment"]] = d["failed"]
        else:
            two[d["experiment"]] = tuple(SimpleNamespace(**d[str(n)]) for n in LENGTHS)
    for name in [n for n in names if n not in two and n not in failed] if configs else []:
        started = time.monotonic()
        try:
            two[name] = tuple(predict_at(configs[name], n) for n in LENGTHS)
        except Exception as e:  # noqa: BLE001 - reported per run below
            failed[name] = f"{type(e).__name__}: {str(e)[:200]}"
        print(f"[{len(two) + len(failed)}/{len(names)}] {name} {time.monotonic() - started:.0f} s", file=sys.stderr,
              flush=True)
        if progress:
            line = {"experiment": name, "method": configs[name].method, "published": truth[name]}
            line |= {"failed": failed[name]} if name in failed else {
                str(n): {k: getattr(p, k) for k in PARTS} for n, p in zip(LENGTHS, two[name])}
            with progress.open("a") as f:
                f.write(json.dumps(line) + "\n")
    return two, failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("peft", type=Path)
    parser.add_argument("--length", type=int, help="the longest batch's length (default: fitted)")
    parser.add_argument("--json", type=Path, help="write every row and the summary here")
    parser.add_argument("--progress", type=Path, help="append each run's parts at both lengths here as it is sized "
                        "(JSON lines); runs already in it are not sized again")
    parser.add_argument("--summarise", action="store_true", help="report from --progress's runs only, interpolated "
                        "at the fitted length (no direct pass)")
    parser.add_argument("--only", help="only the experiments whose name contains this")
    parser.add_argument("--skip", default="", help="comma-separated: leave out the experiments whose name contains "
                        "one of these (e.g. the slow tuners that need real weights, for another process)")
    parser.add_argument("--reverse", action="store_true", help="size the experiments in reverse order (a second "
                        "process on another --progress file meets the first half-way)")
    args = parser.parse_args()
    found = published(args.peft)
    skip = [part for part in args.skip.split(",") if part]
    names = [n for n in found if (args.only is None or args.only in n) and not any(part in n for part in skip)]
    truth = {n: found[n][1] for n in found}
    configs = {}
    if not args.summarise:
        by_run = {cfg.run: cfg for cfg in run_configs([found[n][0] for n in names])}  # and the untrained baseline
        configs = {n: by_run[n.replace("/", "--")] for n in names}
    two, failed = sized(names[::-1] if args.reverse else names, configs, truth, args.progress)
    length = args.length or fit_length(two, truth)
    rows = []
    for name, pair in two.items():
        method = configs[name].method if configs else name.split("/")[0]
        predicted = interpolated(pair, length)
        how = "interpolated"
        if not args.summarise:
            try:
                p = predict_at(configs[name], length)
                predicted, how = p.reserved, p.measured.split(" ")[0]
            except Exception as e:  # noqa: BLE001 - sized at both lengths: the interpolation stands, said
                how = f"interpolated ({type(e).__name__} at {length})"
        rows.append({"experiment": name, "method": method, "published": truth[name], "predicted": predicted,
                     "error": predicted / truth[name] - 1, "how": how,
                     "error_at_768": interpolated(pair, 768) / truth[name] - 1}
                    | {k: getattr(pair[1], k) for k in PARTS})
    loo = leave_one_out(two, truth) if args.length is None and len(two) > 2 else {}
    for r in rows:
        if loo:
            r["loo_length"], r["loo_error"] = loo[r["experiment"]]
    summary = report(rows, failed, length, args.length is None) | {"runs": len(found)}
    if args.json:
        doc = {"about": about(args.json.name), "summary": summary, "rows": rows, "failed": failed}
        args.json.write_text(json.dumps(doc, indent=1) + "\n")
    return 0


def about(name: str) -> dict[str, str]:
    """Where, when, at which commit and with what the check ran (docs/results' provenance block)."""
    import datetime
    import platform
    import subprocess
    from importlib.metadata import version

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                           cwd=ROOT).stdout.strip()
    return {"file": name, "command": "python scripts/plan_vs_peft.py PEFT_CHECKOUT --progress FILE --json FILE",
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU threads, no GPU",
            "commit": commit.strip() + (" (dirty)" if dirty else ""),
            "date": datetime.date.today().isoformat(),
            "versions": ", ".join(f"{p} {version(p)}" for p in ("torch", "transformers", "peft")),
            "note": "Predicted by bench plan's memory predictor (bench/choose/memplan.py) on the CPU; the published figures "
                    "are PEFT's (docs/results/peft-metamathqa.json), measured on an L40S."}


def stats(errors: list[float]) -> dict[str, float]:
    e = [abs(x) for x in errors]
    return {"median_abs": statistics.median(e), "mean_abs": statistics.mean(e), "max_abs": max(e),
            "within_10": sum(x <= 0.10 for x in e) / len(e), "within_20": sum(x <= 0.20 for x in e) / len(e)}


def _line(label: str, s: dict[str, float]) -> str:
    return (f"{label}: median |error| {100 * s['median_abs']:.1f}%, mean {100 * s['mean_abs']:.1f}%, max "
            f"{100 * s['max_abs']:.1f}%; within +-10% {100 * s['within_10']:.0f}%, within +-20% "
            f"{100 * s['within_20']:.0f}%")


def report(rows: list[dict], failed: dict[str, str], length: int, fitted: bool) -> dict:
    from scipy.stats import spearmanr

    rows.sort(key=lambda r: r["error"])
    print(f"{'experiment':58} {'published':>9} {'predicted':>9} {'error':>7} {'loo':>7} {'@768':>7}")
    for r in rows:
        print(f"{r['experiment'][:58]:58} {r['published'] / GIB:8.2f}G {r['predicted'] / GIB:8.2f}G "
              f"{100 * r['error']:+6.1f}% {100 * r.get('loo_error', float('nan')):+6.1f}% "
              f"{100 * r['error_at_768']:+6.1f}%")
    for name, why in failed.items():
        print(f"{name[:58]:58} not sized: {why}")
    truths = [r["published"] for r in rows]
    constant = statistics.median(truths)
    summary = {"runs": len(rows) + len(failed), "sized": len(rows), "length": length, "fitted": fitted,
               "in_sample": stats([r["error"] for r in rows]),
               "spearman": spearmanr([r["predicted"] for r in rows], truths).statistic,
               "at_768": stats([r["error_at_768"] for r in rows]),
               "spearman_at_768": spearmanr([t * (1 + r["error_at_768"]) for r, t in zip(rows, truths)],
                                            truths).statistic,
               "constant_at_median": stats([constant / t - 1 for t in truths]) | {"bytes": constant},
               "worst": [[r["experiment"], r["error"]] for r in sorted(rows, key=lambda r: -abs(r["error"]))[:5]]}
    if "loo_error" in rows[0]:
        summary["leave_one_out"] = stats([r["loo_error"] for r in rows]) | {
            "lengths": sorted({r["loo_length"] for r in rows})}
    print(f"\n{len(rows)} runs sized, {len(failed)} not; longest batch {length} tokens "
          f"({'fitted: the one length with the smallest median error' if fitted else 'given'})")
    print(_line("at that length (in-sample)", summary["in_sample"]) + f"; Spearman {summary['spearman']:.3f}")
    if "leave_one_out" in summary:
        print(_line(f"leave-one-out (lengths {summary['leave_one_out']['lengths']})", summary["leave_one_out"]))
    print(_line("at max_seq_len 768 (no fit)", summary["at_768"]) + f"; Spearman {summary['spearman_at_768']:.3f}")
    print(_line(f"a constant at the published median ({constant / GIB:.2f} GiB)", summary["constant_at_median"]))
    print("worst five: " + "; ".join(f"{n} {100 * e:+.1f}%" for n, e in summary["worst"]))
    return summary


if __name__ == "__main__":
    sys.exit(main())
