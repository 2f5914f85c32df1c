"""General benchmarks through lm-evaluation-harness (eval.lm_eval, the `lm-eval` extra) on the model as trained.

The model is handed to lm-eval in memory, adapter on (lm_eval.models.huggingface.HFLM with the PeftModel), so the
scores are those of `lm_eval --model hf --model_args pretrained=BASE,peft=ADAPTER` on the saved adapter. Task data
paths in a task YAML (`dataset_kwargs.data_files`) are read relative to eval.lm_eval.include_path.
"""

from __future__ import annotations

import contextlib
import math
import os
from typing import Any

import torch

from bench.core.config import RunConfig

# What lm-eval asks of a model per output type: scored continuations, or text from generate().
GENERATES = "generate_until"


@contextlib.contextmanager
def _inside(folder: str | None):
    """In the task folder, so relative data files in its YAMLs are found wherever the suite runs from."""
    before = os.getcwd()
    if folder:
        os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


def _leaves(node: Any) -> list[Any]:
    """The tasks of a loaded task or group (lm-eval nests groups as dicts of their tasks)."""
    if isinstance(node, dict):
        return [t for v in node.values() for t in _leaves(v)]
    return [node]


@torch.no_grad()
def _virtual_positions(model, device) -> int:
    """How many positions more than its input the model's logits have: PEFT's prompt and P-tuning prepend their
    virtual tokens to the input and return their logits too, which lm-eval (scoring the last positions of the
    input's length) reads off by that many positions."""
    probe = torch.tensor([[0, 1, 2]], device=device)
    return model(input_ids=probe).logits.shape[1] - probe.shape[1]


@torch.no_grad()
def _generate_drift(model, device, steps: int = 3) -> float:
    """How far generate()'s logits stray from the model's own forward pass over a few greedy steps of a probe
    (transformers 5.24.0 with peft 0.21.2 mis-decodes prompt-learning adapters by 0.1-0.7; agreeing releases by
    float rounding)."""
    probe = torch.tensor([[3, 4, 5, 6]], device=device)
    out = model.generate(input_ids=probe, attention_mask=torch.ones_like(probe), max_new_tokens=steps,
                         do_sample=False, output_scores=True, return_dict_in_generate=True, pad_token_id=0)
    drift = 0.0
    for step, scores in enumerate(out.scores):
        seq = out.sequences[:, : probe.shape[1] + step]
        own = model(input_ids=seq, attention_mask=torch.ones_like(seq)).logits[:, -1]
        drift = max(drift, (scores.float() - own.float()).abs().max().item())
    return drift


def unusable(cfg: RunConfig, method, model, device, output_types: set[str]) -> str | None:
    """Why lm-eval's scores of this model on a task with these output types would mean nothing, or None: measured
    on the model, not assumed from the method."""
    if method is not None and not method.kv_cache_generate and GENERATES in output_types:
        drift = _generate_drift(model, device)
        if drift > 1e-3:
            import peft
            import transformers

            return (f"not scored: generate()'s logits for {cfg.method} differ from its forward pass by {drift:.2g} "
                    f"with transformers {transformers.__version__} and peft {peft.__version__}, which lm-eval's "
                    "generation tasks use (the harness's own scores use greedy_virtual)")
    extra = _virtual_positions(model, device) if method is not None else 0
    if extra and output_types - {GENERATES}:
        return (f"not scored: {cfg.method}'s logits carry {extra} virtual-token positions before the input's, so "
                "lm-eval's loglikelihoods would be read off by that many positions")
    return None


def _manager(task_manager, include_path: str | None, tasks: list[str]):
    """lm-eval's task index: of the local folder alone when it holds every task (indexing lm-eval's 200-odd
    built-in task folders takes 10-15 s on a CPU), else of both."""
    if include_path:
        local = task_manager(include_path=include_path, include_defaults=False)
        if set(tasks) <= set(local.all_tasks):
            return local
    return task_manager(include_path=include_path)


def run_lm_eval(cfg: RunConfig, method, model, tokenizer, device) -> tuple[dict[str, float], dict[str, Any]]:
    """Each task's scores as metrics `lm_eval.TASK.METRIC` (`.FILTER` where the filter is not 'none'), and the
    record's `lm_eval` part: lm-eval's version, per task its scores with standard errors, sample counts and
    version, and the tasks not scored with the reason."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from bench.run.safety import sandbox_lm_eval_templates

    spec = cfg.eval.lm_eval
    part: dict[str, Any] = {"version": lm_eval.__version__, "tasks": {}, "not_scored": {}}
    sandbox_lm_eval_templates()
    with _inside(spec.include_path):
        manager = _manager(TaskManager, spec.include_path, spec.tasks)
        kept = []
        for name in spec.tasks:
            types = {t.config.output_type for t in _leaves(manager.load_task_or_group([name]))}
            reason = unusable(cfg, method, model, device, types)
            if reason:
                part["not_scored"][name] = reason
            else:
                kept.append(name)
        if not kept:
            return {}, part
        tokenizer.padding_side = "left"
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=spec.batch_size)
        out = lm_eval.simple_evaluate(model=lm, tasks=kept, task_manager=manager, num_fewshot=spec.num_fewshot,
                                      limit=spec.limit, log_samples=False, verbosity="ERROR")
    metrics: dict[str, float] = {}
    for task, values in out["results"].items():
        scores = {k: float(v) for k, v in values.items()
                  if "," in k and isinstance(v, (int, float)) and math.isfinite(v)}
        part["tasks"][task] = {"scores": scores, "n_samples": out.get("n-samples", {}).get(task),
                               "version": out.get("versions", {}).get(task)}
        for key, value in scores.items():
            name, _, flt = key.partition(",")
            if not name.endswith("_stderr"):
                metrics[f"lm_eval.{task}.{name}" + (f".{flt}" if flt != "none" else "")] = value
    return metrics, part
