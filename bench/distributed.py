"""One run across several processes: the worker under `accelerate launch` (DDP, FSDP), its rank, and global sums.

The runner starts such a run as `python -m accelerate.commands.launch --config_file C --num_processes N -m bench.worker
CONFIG RUN_DIR`; every process runs the worker, trains its share of each micro-batch, and only the main process
evaluates and writes the result.
"""

from __future__ import annotations

import os
from typing import Any

import torch

SUPPORTED = ("MULTI_GPU", "MULTI_CPU", "FSDP")


class DistributedError(Exception):
    """The accelerate set-up cannot run this loop."""


class Ranks:
    """This process's place among the run's processes, and the collectives the training loop needs."""

    def __init__(self, device: torch.device, requested: str | None = None):
        """`device`: the one this process would use alone; accelerate picks each process's own from it.
        `requested`: the distributed_type the run's accelerate config names, to refuse what accelerate would
        quietly replace."""
        from accelerate import Accelerator

        if requested == "FSDP" and device.type == "cpu":
            # accelerate 1.15 builds its FSDP plugin for GPU launches only; on a CPU it would run plain DDP under a
            # record that asked for FSDP.
            raise DistributedError("the accelerate config asks for FSDP, which accelerate runs on CUDA devices only; "
                                   "on a CPU use DDP (training.distributed without a config file)")
        # Precision stays the suite's (the worker's autocast); accelerate would otherwise wrap forward in its own.
        self.accelerator = Accelerator(cpu=device.type == "cpu", mixed_precision="no")
        kind = self.accelerator.distributed_type.value
        if kind not in SUPPORTED:
            raise DistributedError(
                f"accelerate set up {kind}; this training loop runs under DDP ({', '.join(SUPPORTED[:2])}) or FSDP "
                "(DeepSpeed owns the optimiser step and loss scaling, which the shared loop does itself)")
        self.kind = kind
        self.rank = self.accelerator.process_index
        self.world = self.accelerator.num_processes
        self.main = self.accelerator.is_main_process
        self.device = self.accelerator.device
        self.sharded = kind == "FSDP"
        self.model: torch.nn.Module | None = None  # the wrapped model, once prepared

    def prepare(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer):
        """Wrap model and optimizer for the set-up (DDP, FSDP); FSDP replaces the parameters the optimizer holds."""
        self.model, optimizer = self.accelerator.prepare(model, optimizer)
        return self.model, optimizer

    def release(self) -> None:
        """Drop accelerate's references to the prepared model and optimizer (their shards, their state), so
        evaluation does not run beside them."""
        self.accelerator.free_memory()
        self.model = None

    def gather(self, values: list[float]) -> list[list[float]]:
        """Every process's values, by rank (float64: token counts stay exact)."""
        mine = torch.tensor(values, dtype=torch.float64, device=self.device)
        return self.accelerator.gather(mine[None]).tolist()

    def sum(self, value: float) -> float:
        return sum(row[0] for row in self.gather([value]))

    def state_dict(self) -> dict[str, Any]:
        """The whole model's state on the main process; every process must call it (FSDP gathers the shards)."""
        return self.accelerator.get_state_dict(self.model)

    def describe(self) -> dict[str, Any]:
        """What the record says about the set-up."""
        per_machine = int(os.environ.get("LOCAL_WORLD_SIZE", self.world))
        return {"world_size": self.world, "distributed_type": self.kind, "backend": self.accelerator.state.backend,
                "num_machines": self.world // per_machine, "processes_per_machine": per_machine}
