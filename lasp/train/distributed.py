"""Data-parallel training under ``torchrun``.

``torchrun --nproc_per_node N -m lasp <stage> RECIPE`` starts N ranks; each
draws its own batches (the sampler is sharded by rank) and may train a
different language. The system's module runs inside torch's
``DistributedDataParallel``, which all-reduces gradients bucket by bucket while
backward is still running. Masked Linears always produce a (zero outside the
mask) gradient, so the ranks' gradients line up whatever language each trains;
the confined optimizer then restores every weight outside the union of *all*
ranks' languages of the step.

Process groups. On CPU the default group is gloo. On GPUs it is
``cpu:gloo,cuda:nccl``: NCCL serves CUDA tensors (gradients, the per-step
reduction) and gloo any CPU tensor a collective is handed, so no collective can
fail with "no backend for device cpu". Every rank also joins a second gloo group
with a long timeout, :data:`WAIT_TIMEOUT`, used only where ranks wait for rank 0's
one-off work (the mask search, the vocabulary, checkpoint writes): a mask search
on XLSR-53 can outlast NCCL's 10-minute default, and a rank waiting on a CPU
barrier holds no GPU stream. The training group keeps :data:`STEP_TIMEOUT`, so a
rank that hangs inside a step is still noticed. (If rank 0 dies during its
one-off work, torchrun stops the other ranks at once; the long timeout does not
delay that.)

One collective per step besides DDP's own: :func:`all_reduce_sum` of a small
float64 vector on the training device (non-finite flag, loss, normaliser,
time-budget flag, and one entry per language for the union of the ranks'
languages), read back with one host synchronization after backward.

``find_unused_parameters=True`` for every system: the adapters system leaves
the other languages' adapters out of a rank's step, XLSR recipes use layerdrop
(ranks skip different layers), and with ``mask_time_prob: 0`` fine-tuning never
touches ``masked_spec_embed``. DDP then marks those parameters ready itself; a
parameter no rank used keeps ``grad=None`` and the optimizer skips it, exactly
as in a one-process run.
"""
from __future__ import annotations

import contextlib
import inspect
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterable

import torch
import torch.distributed as dist

from lasp.device import pick_device


# a training collective that has not completed after this long is a hang (torch's NCCL default is 10 minutes;
# a step plus a checkpoint at XLSR-53 scale stays well inside 30)
STEP_TIMEOUT = timedelta(minutes=30)
# ranks waiting for rank 0's one-off work: a mask search (IMP or LaSS on ten languages) takes hours at paper scale
WAIT_TIMEOUT = timedelta(hours=12)
_WAIT_GROUP: dict[str, Any] = {}


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    # in a process group: several ranks, or torchrun with one (the same code path as N ranks, e.g. to check NCCL
    # on a one-GPU machine)
    grouped: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1 or self.grouped


def backend_for(device: torch.device) -> str:
    """The default group's backend: gloo on CPU; on GPUs NCCL for CUDA tensors and gloo for CPU tensors."""
    return "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"


def init_distributed(device_pref: str = "auto") -> DistInfo:
    """Join the process group torchrun describes in the environment (a no-op without torchrun).

    Every rank calls this at the start of a stage: it also creates the long-timeout group the waits use.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_pref, local)
    grouped = world > 1 or "TORCHELASTIC_RUN_ID" in os.environ  # torchrun sets it, also for one process
    if grouped:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group(backend=backend_for(device), timeout=STEP_TIMEOUT)
        if "group" not in _WAIT_GROUP:
            _WAIT_GROUP["group"] = dist.new_group(backend="gloo", timeout=WAIT_TIMEOUT)
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=device, grouped=grouped)


def describe(info: DistInfo) -> dict | None:
    """What a run's summary records about its process group (None in one process without torchrun)."""
    if not info.enabled or not dist.is_initialized():
        return None
    return {"world_size": info.world_size, "backend": str(dist.get_backend()), "device": str(info.device)}


def wrap_module(module: torch.nn.Module, info: DistInfo) -> torch.nn.Module:
    """``module`` inside DistributedDataParallel when there are several ranks, else ``module`` itself."""
    if not info.enabled:
        return module
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [info.device.index] if info.device.type == "cuda" else None
    # no buffer broadcast before every forward: every rank holds the same buffers (mask bits among them, if a
    # masked module keeps its bits as buffers), synced once when DDP starts
    no_resync = ({"forward_sync_buffers": False}
                 if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                 else {"broadcast_buffers": False})
    return DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=True, **no_resync)


def distribute(system, info: DistInfo) -> None:
    """Run ``system``'s forward/backward through DistributedDataParallel when ``info`` has several ranks.

    DDP wraps the outermost module (the HF model, or the wrapper that holds it together with the masks or
    adapters), so it sees every trainable parameter, adapters included, and the wrapper's forward is unchanged.
    """
    wrapped = wrap_module(system.module, info)
    system.replica = wrapped if wrapped is not system.module else None


def normalize_grads(params: Iterable[torch.nn.Parameter], total_weight: torch.Tensor, info: DistInfo) -> None:
    """Turn the gradients into (sum over ranks) / ``total_weight``, the global normaliser of the step.

    DDP leaves the *mean* over ranks in ``.grad`` (sum / world_size), so the factor is world_size / total_weight.
    ``total_weight`` is a device tensor: the factor is applied without reading it on the host.
    """
    grads = [p.grad for p in params if p.grad is not None]
    if grads:
        factor = (info.world_size / total_weight.clamp(min=1e-12)).to(grads[0].device, torch.float32)
        torch._foreach_mul_(grads, factor)


def all_reduce_sum(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum ``values`` (a tensor on the training device) over the ranks, in place; one collective."""
    if info.enabled:
        dist.all_reduce(values)
    return values


def no_sync(system, last: bool):
    """DDP's ``no_sync()`` for every micro-batch but the ``last`` of a step (gradients accumulate locally and are
    all-reduced once); a no-op in one process."""
    replica = getattr(system, "replica", None)
    return contextlib.nullcontext() if last or replica is None else replica.no_sync()


def all_gather_object(obj: Any, info: DistInfo) -> list[Any]:
    """Gather a small picklable object from every rank, over the gloo wait group (checkpoint time only)."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj, group=_WAIT_GROUP.get("group"))
    return out


def wait_for_main(info: DistInfo) -> None:
    """Every rank waits here until all arrive, however long rank 0's one-off work takes (:data:`WAIT_TIMEOUT`)."""
    if info.enabled:
        dist.barrier(group=_WAIT_GROUP.get("group"))


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
        _WAIT_GROUP.clear()
