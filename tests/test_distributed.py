"""Scaling out: runs in parallel over device slots (--devices), and one run over two processes through accelerate."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest

from bench.datasets import batches as D
from bench.core.records import load_records
from bench.launch.runner import DevicesError, Slot, parse_devices, slot_problems
from bench.spec.suite import load_suite
from tests.conftest import ROOT, assert_same_record, default_sigint

SUITE = """
name: scale
version: 1
model: {{preset: tiny-llama}}
dataset: {{path: {data}, eval_size: 8}}
budget: {{max_steps: {steps}}}
training: {{learning_rate: 1e-3, batch_size: 4, max_seq_len: 384}}
eval: {{max_examples: 8, batch_size: 8, max_new_tokens: 8}}
baseline: false
output: {out}
runs:
{runs}
"""

# The same LoRA run in one process and in two (DDP over gloo on the CPU); the second pair accumulates two
# micro-batches of 3 examples per step, so the processes' shares are uneven (2 and 1) and DDP skips a sync.
LORA_PAIRS = """
  - {method: lora, params: {r: 8, lora_alpha: 16}}
  - {method: lora, name: lora-x2, params: {r: 8, lora_alpha: 16}, training: {distributed: {num_processes: 2}}}
  - {method: lora, name: accum, params: {r: 8, lora_alpha: 16}, training: {batch_size: 3, grad_accum: 2}}
  - method: lora
    name: accum-x2
    params: {r: 8, lora_alpha: 16}
    training: {batch_size: 3, grad_accum: 2, distributed: {num_processes: 2}}
"""

# Measured on this 2-core CPU: the largest step-loss difference between one process and two was 4.8e-07 (float32
# sums in another order: each process's share of the loss, then their sum); eval losses were identical.
LOSS_TOLERANCE = 1e-5


def write_suite(tmp_path, runs: str, steps: int = 6):
    out = tmp_path / "results"
    path = tmp_path / "scale.yaml"
    path.write_text(SUITE.format(data=ROOT / "data" / "smoke.jsonl", out=out, steps=steps, runs=runs))
    return path, out


def run_cli(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "bench", "run", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


@pytest.mark.worker
def test_lora_on_two_cpu_processes_matches_one_process(tmp_path):
    suite, out = write_suite(tmp_path, LORA_PAIRS)
    result = run_cli(suite)
    assert result.returncode == 0, result.stdout + result.stderr
    records = {r.run: r for r in load_records(out)}
    for one, two in (("lora", "lora-x2"), ("accum", "accum-x2")):
        single, dist = records[one], records[two]
        assert single.status == dist.status == "success", dist.error
        assert "world_size" not in single.metrics and "distributed" not in single.environment
        env = dist.environment["distributed"]
        assert dist.metrics["world_size"] == env["world_size"] == 2
        # MFU's peak is two devices' (none on a CPU, but the count is recorded either way)
        assert (dist.metrics["mfu_devices"], single.metrics["mfu_devices"]) == (2, 1)
        assert (env["distributed_type"], env["backend"], env["num_machines"]) == ("MULTI_CPU", "gloo", 1)
        # Both processes together saw exactly the one-process batches: the same tokens, step by step.
        assert [p["tokens"] for p in dist.curve] == [p["tokens"] for p in single.curve]
        assert dist.metrics["train_tokens"] == single.metrics["train_tokens"]
        diffs = [abs(a["loss"] - b["loss"]) for a, b in zip(single.curve, dist.curve)]
        assert len(diffs) == 6 and max(diffs) <= LOSS_TOLERANCE, diffs
        assert abs(dist.metrics["eval_loss"] - single.metrics["eval_loss"]) <= LOSS_TOLERANCE
        assert [p.prediction for p in dist.predictions] == [p.prediction for p in single.predictions]
        # Memory per process and in total; throughput in total and per process.
        peaks = env["peak_memory_bytes_per_process"]
        assert len(peaks) == 2 and all(p > 100e6 for p in peaks)
        assert dist.metrics["peak_memory_bytes"] == max(peaks)
        assert dist.metrics["peak_memory_bytes_total"] == sum(peaks)
        m = dist.metrics
        assert m["train_tokens_per_second_per_process"] == pytest.approx(m["train_tokens_per_second"] / 2)
        assert m["train_tokens_per_second"] == pytest.approx(m["train_tokens"] / m["train_seconds"])
        assert dist.merge.status == "merged" and dist.merge.greedy_identical
        assert (out / two / "adapter" / "adapter_model.safetensors").is_file()
        assert "distributed_type: MULTI_GPU" in (out / two / "accelerate.yaml").read_text()
    # The accumulating pair really is another computation, not the first pair again.
    assert records["accum"].curve[0]["tokens"] != records["lora"].curve[0]["tokens"]


@pytest.mark.worker
def test_two_machines_join_the_way_accelerate_does_it(tmp_path):
    """Two 'machines' on localhost, one process each: the main one runs the suite, the other joins with the scaling
    guide's command (`accelerate launch ... --machine_rank 1 -m bench.run.worker RUN_DIR/config.json SCRATCH`)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "two-machines.yaml").write_text(
        "compute_environment: LOCAL_MACHINE\ndistributed_type: MULTI_GPU\nnum_machines: 2\nmachine_rank: 0\n"
        f"num_processes: 2\nmain_process_ip: 127.0.0.1\nmain_process_port: {port}\nsame_network: true\n"
        "rdzv_backend: static\nmixed_precision: 'no'\n")
    suite, out = write_suite(tmp_path, "  - {method: lora, params: {r: 8, lora_alpha: 16}, training: {distributed: "
                                       "{num_processes: 2, config: two-machines.yaml}}}\n")
    main = subprocess.Popen([sys.executable, "-m", "bench", "run", str(suite)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    config = out / "lora" / "config.json"
    deadline = time.time() + 120
    while time.time() < deadline and not config.exists():
        time.sleep(0.2)
    other = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                            str(tmp_path / "two-machines.yaml"), "--machine_rank", "1", "--num_processes", "2",
                            "-m", "bench.run.worker", str(config), str(tmp_path / "scratch")],
                           capture_output=True, text=True, timeout=600, cwd=ROOT)
    stdout, _ = main.communicate(timeout=600)
    assert other.returncode == 0 and main.returncode == 0, stdout + other.stdout + other.stderr
    (record,) = load_records(out)
    env = record.environment["distributed"]
    assert (env["world_size"], env["num_machines"], env["processes_per_machine"]) == (2, 2, 1)
    assert record.status == "success" and len(record.curve) == 6
    assert not (tmp_path / "scratch").exists()  # only the main process writes


def test_shares_of_a_micro_batch_add_up_to_the_batch_and_a_process_without_one_gets_a_filler():
    feats = [D.Features(list(range(n)), [D.IGNORE] * 2 + list(range(2, n))) for n in (5, 6, 7)]
    shares = [D.share(feats, rank, 2) for rank in range(2)]
    assert shares == [feats[:2], feats[2:]]
    targets = [int((D.collate(s, 0, packed=True)["labels"] != D.IGNORE).sum()) for s in shares]
    assert sum(targets) == int((D.collate(feats, 0, packed=True)["labels"] != D.IGNORE).sum())
    assert D.share(feats[:1], 0, 2) == feats[:1] and D.share(feats[:1], 1, 2) == []
    # 40 examples in batches of 3 leave one batch of 1: the second process's share of it is empty, so it gets the
    # filler, flagged and without a target token; the other shares together are the one-process batches.
    many = [D.Features(list(range(4 + i % 5)), [D.IGNORE] + list(range(1, 4 + i % 5))) for i in range(40)]
    one = list(D.batches(many, 3, 0, 0, True, 1.0))
    two = [list(D.batches(many, 3, 0, 0, True, 1.0, rank=r, world=2)) for r in range(2)]
    assert len(one) == len(two[0]) == len(two[1]) == 14
    fillers = [b for _, b in two[1] if "filler" in b]
    assert len(fillers) == 1 and (fillers[0]["labels"] == D.IGNORE).all()
    for (_, whole), (_, a), (_, b) in zip(one, *two):
        got = [x for x in (a, b) if "filler" not in x]
        assert sum(x["input_ids"].numel() for x in got) == whole["input_ids"].numel()


def test_devices_cpu_cpu_gives_the_sequential_records_using_both_slots(tmp_path, smoke_results):
    sequential, _ = smoke_results
    out = tmp_path / "parallel"
    result = run_cli(ROOT / "suites" / "smoke.yaml", "--output", out, "--devices", "cpu,cpu")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "on 2 slots (cpu#0, cpu#1)" in result.stdout
    before = {r.run: r for r in load_records(sequential)}
    after = {r.run: r for r in load_records(out)}
    assert sorted(after) == sorted(before)
    threads = max(1, len(psutil.Process().cpu_affinity()) // 2)
    for run, r in after.items():
        assert_same_record(r, before[run], run)
        assert r.environment["threads"] == threads and "slot" not in before[run].environment
    assert {r.environment["slot"] for r in after.values()} == {"cpu#0", "cpu#1"}
    # The report says where each ran.
    assert "slot" in (out / "report.md").read_text()


def _workers_of(folder) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "bench.run.worker" in cmd and str(folder) in cmd:
            found.append(p)
    return found


@pytest.mark.worker
def test_ctrl_c_records_every_run_in_progress_as_interrupted_and_leaves_no_worker(tmp_path):
    runs = ("  - {method: lora}\n"
            "  - {method: ia3, name: ia3-x2, training: {distributed: {num_processes: 2}}}\n"
            "  - {method: full}\n")
    suite, out = write_suite(tmp_path, runs, steps=2000)
    proc = subprocess.Popen([sys.executable, "-m", "bench", "run", str(suite), "--devices", "cpu,cpu"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                            preexec_fn=default_sigint)
    progress = [out / run / "progress.jsonl" for run in ("lora", "ia3-x2")]
    deadline = time.time() + 300
    while time.time() < deadline and not all(p.exists() and p.read_text().count("\n") >= 3 for p in progress):
        time.sleep(0.2)
    # The single run's worker, and accelerate's launcher with two workers under it.
    assert len(_workers_of(out / "lora")) == 1 and len(_workers_of(out / "ia3-x2")) == 3
    proc.send_signal(signal.SIGINT)
    stdout, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, stdout
    records = {r.run: r for r in load_records(out)}
    assert sorted(records) == ["ia3-x2", "lora"]  # `full` never started
    for r in records.values():
        assert r.status == "interrupted" and r.last_step >= 3 and len(r.curve) >= 3
    assert records["lora"].environment["slot"] != records["ia3-x2"].environment["slot"]
    time.sleep(1)
    assert not _workers_of(out), "no worker process may outlive the runner"


def test_devices_spec_parsing():
    assert [(s.name, s.env["CUDA_VISIBLE_DEVICES"], s.gpus) for s in parse_devices("0,1", cores=16)] == [
        ("cuda:0", "0", 1), ("cuda:1", "1", 1)]
    groups = parse_devices("0+1, 2+3", cores=16)
    assert [(s.name, s.env["CUDA_VISIBLE_DEVICES"], s.env["OMP_NUM_THREADS"]) for s in groups] == [
        ("cuda:0+1", "0,1", "8"), ("cuda:2+3", "2,3", "8")]
    cpus = parse_devices("cpu,cpu,cpu", cores=2)
    assert [s.name for s in cpus] == ["cpu#0", "cpu#1", "cpu#2"]
    assert all(s.env["BENCH_DEVICE"] == "cpu" and s.env["OMP_NUM_THREADS"] == "1" for s in cpus)
    for bad, says in (("0,0", "GPU 0 is named twice"), ("0+1,1", "GPU 1 is named twice"),
                      ("gpu0", "'gpu0' is not a GPU index"), ("0,,1", "'' is not a GPU index")):
        with pytest.raises(DevicesError, match=says):
            parse_devices(bad)


def test_a_gpu_slot_too_small_for_a_distributed_run_is_named(tmp_path):
    suite, _ = write_suite(tmp_path, LORA_PAIRS)
    configs = load_suite(suite).resolved_runs()
    problems = slot_problems(configs, [Slot("cuda:0", gpus=1), Slot("cuda:1+2", gpus=2)])
    assert problems == [
        "run lora-x2 trains on 2 processes, one per GPU, but slot cuda:0 has fewer GPUs: group them with '+', "
        "e.g. --devices 0+1,2+3",
        "run accum-x2 trains on 2 processes, one per GPU, but slot cuda:0 has fewer GPUs: group them with '+', "
        "e.g. --devices 0+1,2+3"]
    assert slot_problems(configs, [Slot("cpu#0"), Slot("cuda:1+2", gpus=2)]) == []


def test_distributed_config_resolves_hashes_its_file_and_a_missing_file_is_reported(tmp_path):
    from bench.core.yamlio import SuiteError

    runs = "  - {method: lora, training: {distributed: {num_processes: 2, config: a.yaml}}}\n"
    suite, _ = write_suite(tmp_path, runs)
    with pytest.raises(SuiteError) as e:
        load_suite(suite)
    assert f"runs[0].training.distributed.config: no such file '{tmp_path / 'a.yaml'}'" in e.value.render()
    (tmp_path / "a.yaml").write_text("distributed_type: FSDP\n")  # FSDP1, accelerate's default
    with pytest.raises(SuiteError) as e:
        load_suite(suite)
    assert f"'{tmp_path / 'a.yaml'}' sets up FSDP version 1, which flattens the frozen base and the fp32 weights " \
           "that train into one tensor and fails on their mixed dtypes; set fsdp_config.fsdp_version: 2" in \
           e.value.render()
    (tmp_path / "a.yaml").write_text("distributed_type: FSDP\nfsdp_config: {fsdp_version: 2}\n")
    dist = load_suite(suite).resolved_runs()[0].training.distributed
    assert dist.config == str(tmp_path / "a.yaml") and dist.num_processes == 2
    first = load_suite(suite).resolved_runs()[0].config_hash
    (tmp_path / "a.yaml").write_text("distributed_type: MULTI_GPU\n")
    assert load_suite(suite).resolved_runs()[0].config_hash != first  # an edited config reruns the run
    # Without `distributed` nothing is added to a run's config, so stored records keep their hashes.
    plain = load_suite(ROOT / "suites" / "smoke.yaml").resolved_runs()
    assert all("distributed" not in c.model_dump()["training"] for c in plain)


FSDP2 = """\
compute_environment: LOCAL_MACHINE
distributed_type: FSDP
num_machines: 1
num_processes: 2
main_process_port: 0
fsdp_config: {fsdp_version: 2, fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP,
              fsdp_transformer_layer_cls_to_wrap: LlamaDecoderLayer, fsdp_state_dict_type: FULL_STATE_DICT}
"""


@pytest.mark.worker
def test_fsdp_on_a_cpu_is_a_failed_run_that_says_why_not_a_quiet_ddp_run(tmp_path):
    """accelerate 1.15 builds FSDP for GPU launches only; on a CPU it ran plain DDP (MULTI_CPU) and the record would
    have been DDP's under a run that asked for FSDP. FSDP itself has not run here: no GPU was lent."""
    (tmp_path / "fsdp.yaml").write_text(FSDP2)
    runs = "  - {method: lora, name: lora-fsdp, training: {distributed: {num_processes: 2, config: fsdp.yaml}}}\n"
    suite, out = write_suite(tmp_path, runs, steps=2)
    result = run_cli(suite)
    assert result.returncode == 1
    (record,) = load_records(out)
    assert record.status == "failed"
    assert "the accelerate config asks for FSDP, which accelerate runs on CUDA devices only" in record.error
