"""`bench plan`'s GPU memory prediction against PEFT's 63 published measurements (a slow check, not a test).

Run: python scripts/plan_vs_peft.py PEFT_CHECKOUT [--length N] [--json OUT]
Every stored result of PEFT's method_comparison (method_comparison/MetaMathQA/results/*.json) names its experiment;
each experiment is imported with bench.peftimport and its memory predicted with PEFT's settings: Llama-3.2-3B's shape,
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
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
GIB = 2**30
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

    from bench.peftimport import suite_of
    from bench.suite import Suite, _with_adapter_methods
    from bench.yamlio import load_yaml, to_plain

    tmp = Path(tempfile.mkdtemp(prefix="plan-vs-peft-"))
    out = tmp / "suite.yaml"
    suite, _ = suite_of(folders, out, "llama-3.2-3b", str(ROOT / "data/smoke.jsonl"), max_steps=5000)
    suite["training"] |= {"batch_size": 4, "max_seq_len": 768, "precision": "bf16"}
    with out.open("w") as f:
        YAML().dump(suite, f)
    return _with_adapter_methods(Suite(**to_plain(load_yaml(out)), source=str(out))).resolved_runs()


def predict_at(cfg, length: int):
    from bench.memplan import Setting, predict
    from bench.models import PRESETS
    from methods import METHODS, RunFacts

    spec = cfg.training.optimizer
    setting = Setting(batch_size=4, seq_len=length, dtype="bf16", device="cuda", trainable_fp32=False,
                      autocast=False, optimizer=spec and spec.name,
                      optimizer_kwargs=json.dumps(spec.kwargs if spec else {}, sort_keys=True))
    return predict(PRESETS["llama-3.2-3b"], METHODS[cfg.method], cfg.params, setting,
                   RunFacts(total_steps=5000, special_token_ids=(128000, 128001)))


def reserved(parts: dict[str, float]) -> float:
    """The reserved peak from its parts, as bench.memplan assembles it."""
    from bench.memplan import ALLOCATOR_SHARE

    front = parts["activations"] + parts["logits"] + parts["head_gradients"]
    allocated = parts["base"] + parts["trainable"] + parts["optimizer"] + max(front, parts["gradients"])
    return allocated * (1 + ALLOCATOR_SHARE)


def fit_length(preds: dict[str, tuple], truth: dict[str, int], lengths: tuple[int, int]) -> int:
    """The one length, on a 16-token grid, whose interpolated predictions have the smallest median |error|."""
    lo, hi = lengths

    def median_error(length: int) -> float:
        w = (length - lo) / (hi - lo)
        errors = [abs(reserved({k: (1 - w) * getattr(a, k) + w * getattr(b, k) for k in PARTS}) / truth[n] - 1)
                  for n, (a, b) in preds.items()]
        return statistics.median(errors)

    return min(range(128, 769, 16), key=median_error)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("peft", type=Path)
    parser.add_argument("--length", type=int, help="the longest batch's length (default: fitted)")
    parser.add_argument("--json", type=Path, help="write every row here")
    parser.add_argument("--progress", type=Path, help="append each run's parts at both lengths here as it is sized "
                        "(JSON lines); with --summarise, report from such a file (interpolated, no final pass)")
    parser.add_argument("--summarise", action="store_true")
    args = parser.parse_args()
    if args.summarise:
        return summarise(args.progress)
    from bench.memplan import Setting  # noqa: F401 - fail early where the harness is not importable

    found = published(args.peft)
    names = list(found)
    by_run = {cfg.run: cfg for cfg in run_configs([found[n][0] for n in names])}  # and the untrained baseline
    configs = {n: by_run[n.replace("/", "--")] for n in names}
    truth = {n: found[n][1] for n in names}
    failed: dict[str, str] = {}
    length = args.length
    if length is None:
        two = {}
        for i, name in enumerate(names):
            print(f"[{i + 1}/{len(names)}] {name}", file=sys.stderr, flush=True)
            try:
                two[name] = (predict_at(configs[name], 384), predict_at(configs[name], 768))
            except Exception as e:  # noqa: BLE001 - reported per run below
                failed[name] = f"{type(e).__name__}: {str(e)[:200]}"
            if args.progress:
                line = {"experiment": name, "method": configs[name].method, "published": truth[name]}
                line |= {"failed": failed[name]} if name in failed else {
                    str(n): {k: getattr(p, k) for k in PARTS} for n, p in zip((384, 768), two[name])}
                with args.progress.open("a") as f:
                    f.write(json.dumps(line) + "\n")
        length = fit_length(two, truth, (384, 768))
    rows = []
    for name in names:
        if name in failed:
            continue
        try:
            p = predict_at(configs[name], length)
        except Exception as e:  # noqa: BLE001
            failed[name] = f"{type(e).__name__}: {str(e)[:200]}"
            continue
        rows.append({"experiment": name, "method": configs[name].method, "published": truth[name],
                     "predicted": p.reserved, "error": p.reserved / truth[name] - 1, "how": p.measured.split(" ")[0]}
                    | {k: getattr(p, k) for k in PARTS})
    report(rows, failed, length, args.length is None)
    if args.json:
        args.json.write_text(json.dumps({"length": length, "rows": rows, "failed": failed}, indent=1))
    return 0


def summarise(progress: Path) -> int:
    """The report from --progress's lines: the length fitted as in main, each prediction interpolated at it."""
    from types import SimpleNamespace

    lines = [json.loads(line) for line in progress.read_text().splitlines()]
    done = {d["experiment"]: d for d in lines if "failed" not in d}
    two = {n: (SimpleNamespace(**d["384"]), SimpleNamespace(**d["768"])) for n, d in done.items()}
    truth = {n: d["published"] for n, d in done.items()}
    length = fit_length(two, truth, (384, 768))
    w = (length - 384) / (768 - 384)
    rows = []
    for n, d in done.items():
        parts = {k: (1 - w) * d["384"][k] + w * d["768"][k] for k in PARTS}
        predicted = reserved(parts)
        rows.append({"experiment": n, "method": d["method"], "published": d["published"], "predicted": predicted,
                     "error": predicted / d["published"] - 1} | parts)
    report(rows, {d["experiment"]: d["failed"] for d in lines if "failed" in d}, length, True)
    return 0


def report(rows: list[dict], failed: dict[str, str], length: int, fitted: bool) -> None:
    from scipy.stats import spearmanr

    rows.sort(key=lambda r: r["error"])
    print(f"{'experiment':58} {'published':>9} {'predicted':>9} {'error':>7}  activ.  logits  optim.")
    for r in rows:
        print(f"{r['experiment'][:58]:58} {r['published'] / GIB:8.2f}G {r['predicted'] / GIB:8.2f}G "
              f"{100 * r['error']:+6.1f}%  {r['activations'] / GIB:5.2f}  {r['logits'] / GIB:5.2f}  "
              f"{r['optimizer'] / GIB:5.2f}")
    for name, why in failed.items():
        print(f"{name[:58]:58} not sized: {why}")
    errors = [abs(r["error"]) for r in rows]
    truths = [r["published"] for r in rows]
    constant = statistics.median(truths)
    rho = spearmanr([r["predicted"] for r in rows], truths).statistic
    within = sum(e <= 0.20 for e in errors) / len(errors)
    print(f"\n{len(rows)} runs sized, {len(failed)} not; longest batch {length} tokens "
          f"({'fitted: the one length with the smallest median error' if fitted else 'given'})")
    print(f"median |error| {100 * statistics.median(errors):.1f}%, mean {100 * statistics.mean(errors):.1f}%, "
          f"max {100 * max(errors):.1f}%; within +-10%: {sum(e <= 0.10 for e in errors)}, within +-20%: "
          f"{100 * within:.0f}%; Spearman {rho:.3f}")
    const = [abs(constant / t - 1) for t in truths]
    print(f"a constant at the published median ({constant / GIB:.2f} GiB): median |error| "
          f"{100 * statistics.median(const):.1f}%, within +-20%: {100 * sum(e <= 0.2 for e in const) / len(const):.0f}%")
    worst = sorted(rows, key=lambda r: -abs(r["error"]))[:5]
    print("worst five: " + "; ".join(f"{r['experiment']} {100 * r['error']:+.1f}%" for r in worst))


if __name__ == "__main__":
    sys.exit(main())
