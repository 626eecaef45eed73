"""Training on several processes with ``torch.distributed`` (chapter 10).

Under ``torchrun --nproc_per_node=N`` every process (a *rank*) runs the same training script.
:meth:`Distributed.from_environment` joins the process group torchrun describes (``gloo`` on
CPUs, ``nccl`` on GPUs, chosen automatically); the training engine then

- draws the same shuffled order on every rank and gives rank ``r`` the rows ``r, r + N, ...`` of
  every global batch (its shard), so N ranks together take exactly the batches one process
  would;
- wraps the model in ``DistributedDataParallel``, which averages the gradients over the ranks
  during ``backward``; each rank's loss is scaled by ``N x (its rows) / (the batch's rows)``, so
  the average is the gradient of the whole batch's mean loss, as in one process;
- lets rank 0 alone write checkpoints, logs and progress; every rank reads them to resume;
- checks after every batch whether any rank was asked to stop (Ctrl-C, a stop event), so all
  ranks stop together, after the same batch, and rank 0 keeps the checkpoint.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["Distributed", "ModelStep"]


class ModelStep(torch.nn.Module):
    """A model's two entry points behind one ``forward``, which is what DDP needs to see:
    ``step(batch)`` for element buckets, ``step(species, aevs)`` for padded inputs.

    A batch may lack an element (no water in it, say), and then that element's network takes
    no part in the step. DDP is told to look for such parameters (``find_unused_parameters``):
    where every rank's share lacks the element, DDP leaves the network's gradients unset and
    the optimiser skips it, exactly as in one process; where only some shares lack it, the
    others' gradients are averaged with zeros. ``idle`` is a parameter no step ever uses, so
    DDP's search always finds something and never warns that the search was needless (the
    optimisers and checkpoints see only the model's own parameters).
    """

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.idle = torch.nn.Parameter(torch.zeros(1, device=next(model.parameters()).device))

    def forward(self, *inputs: Any) -> Tensor:
        if len(inputs) == 1:
            return self.model.forward_batch(inputs[0])
        return self.model(*inputs)


@dataclass
class Distributed:
    """This process's place in a ``torch.distributed`` process group (see the module's description)."""

    rank: int
    world_size: int
    local_rank: int
    backend: str
    device: torch.device
    _interrupted: bool = field(default=False, repr=False)

    @classmethod
    def from_environment(cls, device: str = "auto") -> "Distributed | None":
        """Join the process group that ``torchrun`` set up (its ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``
        variables); None when this process runs alone. ``device="cpu"`` forces ``gloo`` on a GPU machine."""
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return None
        use_gpu = torch.cuda.is_available() and str(device) != "cpu"
        backend = "nccl" if use_gpu else "gloo"
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if use_gpu:
            torch.cuda.set_device(local_rank)
        if not dist.is_initialized():
            dist.init_process_group(backend)
        return cls(dist.get_rank(), dist.get_world_size(), local_rank, backend,
                   torch.device("cuda", local_rank) if use_gpu else torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        """True on rank 0, the rank that writes checkpoints and logs."""
        return self.rank == 0

    def shard(self, rows: Tensor) -> Tensor:
        """This rank's rows of a global batch: ``rows[rank::world_size]``."""
        return rows[self.rank::self.world_size]

    def sum(self, value: Tensor) -> Tensor:
        """The sum of ``value`` over all ranks (a new tensor)."""
        total = value.detach().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is True on at least one."""
        value = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item() > 0)

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """``DistributedDataParallel`` around the model's :class:`ModelStep` (gradients averaged in backward)."""
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(ModelStep(model), device_ids=ids, find_unused_parameters=True)

    def catch_interrupts(self) -> None:
        """Turn Ctrl-C (SIGINT, SIGTERM) into a request that all ranks stop after the current batch."""
        def request_stop(signum: int, frame: Any) -> None:
            self._interrupted = True

        signal.signal(signal.SIGINT, request_stop)
        signal.signal(signal.SIGTERM, request_stop)

    @property
    def interrupted(self) -> bool:
        """True once this rank was sent Ctrl-C (see :meth:`catch_interrupts`)."""
        return self._interrupted

    def close(self) -> None:
        """Leave the process group."""
        if dist.is_initialized():
            dist.destroy_process_group()
