"""A run's processes: one alone (`Ranks`), or several under `accelerate launch` (DDP, FSDP), with global sums.

The runner starts such a run as `python -m accelerate.commands.launch --config_file C --num_processes N -m bench.run.worker
CONFIG RUN_DIR`; every process runs the worker, trains its share of each micro-batch, and only the main process
evaluates and writes the result.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import torch

from bench.run.loss import chunked

SUPPORTED = ("MULTI_GPU", "MULTI_CPU", "FSDP")


class DistributedError(Exception):
    """The accelerate set-up cannot run this loop."""


class Ranks:
    """This process's place among the run's processes and the collectives the training loop needs: here a run in
    one process, rank 0 of one, whose collectives return what they are given and whose model is its own."""

    rank, world, main, sharded = 0, 1, True, False

    def __init__(self, device: torch.device):
        self.device = device

    def prepare(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer):
        return model, optimizer

    def release(self) -> None:
        pass

    def gather(self, values: list[float]) -> list[list[float]]:
        return [list(values)]

    def sum(self, value: float) -> float:
        return value

    def state_dict(self) -> dict[str, Any] | None:
        """None: the model saves its own state."""
        return None

    def environment(self) -> dict[str, Any]:
        """What the record's environment says about the processes: nothing for one."""
        return {}

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def no_sync(self, model: torch.nn.Module, last: bool) -> contextlib.AbstractContextManager:
        """Gradient accumulation: gradients are synchronised on the step's last micro-batch only (one process has
        nothing to synchronise)."""
        return contextlib.nullcontext()

    def clip_grad_norm_(self, model: torch.nn.Module, params: list[torch.nn.Parameter], max_norm: float) -> None:
        torch.nn.utils.clip_grad_norm_(params, max_norm)

    def loss(self, model: torch.nn.Module, chunk_bytes: int | str | None) -> contextlib.AbstractContextManager:
        """The chunked loss over response positions (bench.run.loss)."""
        return chunked(model, chunk_bytes)


class DistributedRanks(Ranks):
    """One of several processes under `accelerate launch`: its rank, and the collectives over all of them."""

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

    def state_dict(self) -> dict[str, Any] | None:
        """The whole model's state on the main process; every process must call it (FSDP gathers the shards)."""
        return self.accelerator.get_state_dict(self.model)

    def environment(self) -> dict[str, Any]:
        return {"distributed": self.describe()}

    def backward(self, loss: torch.Tensor) -> None:
        self.accelerator.backward(loss)

    def no_sync(self, model: torch.nn.Module, last: bool) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext() if last else self.accelerator.no_sync(model)

    def clip_grad_norm_(self, model: torch.nn.Module, params: list[torch.nn.Parameter], max_norm: float) -> None:
        """The norm over every process's shards (FSDP): the wrapped model's parameters, not this process's list."""
        self.accelerator.clip_grad_norm_(model.parameters(), max_norm)

    def loss(self, model: torch.nn.Module, chunk_bytes: int | str | None) -> contextlib.AbstractContextManager:
        """The model's own loss: DDP's and FSDP's hooks expect each weight's gradient once per forward, and FSDP's
        shards are whole only inside it, so the chunked loss does not run here."""
        return contextlib.nullcontext()

    def describe(self) -> dict[str, Any]:
        """What the record says about the set-up."""
        per_machine = int(os.environ.get("LOCAL_WORLD_SIZE", self.world))
        return {"world_size": self.world, "distributed_type": self.kind, "backend": self.accelerator.state.backend,
                "num_machines": self.world // per_machine, "processes_per_machine": per_machine}
