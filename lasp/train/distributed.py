"""Data-parallel training under ``torchrun``.

``torchrun --nproc_per_node N -m lasp <stage> RECIPE`` starts N ranks; each
draws its own batches (the sampler is sharded by rank) and may train a
different language. The system's module runs inside torch's
``DistributedDataParallel`` (gloo on CPU, nccl on GPU), which all-reduces
gradients bucket by bucket while backward is still running. Masked Linears
always produce a (zero outside the mask) gradient, so the ranks' gradients
line up whatever language each trains; the confined optimizer then restores
every weight outside the union of *all* ranks' languages of the step (see
:func:`step_languages`).

``find_unused_parameters=True`` for every system: the adapters system leaves
the other languages' adapters out of a rank's step, XLSR recipes use layerdrop
(ranks skip different layers), and with ``mask_time_prob: 0`` fine-tuning never
touches ``masked_spec_embed``. DDP then marks those parameters ready itself; a
parameter no rank used keeps ``grad=None`` and the optimizer skips it, exactly
as in a one-process run. When any rank's loss is non-finite every rank skips
backward for that step, which DDP allows under ``find_unused_parameters``.
"""
from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from typing import Any, Iterable

import torch
import torch.distributed as dist

from lasp.device import pick_device


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_pref: str = "auto") -> DistInfo:
    """Join the process group torchrun describes in the environment (a no-op without torchrun)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_pref, local)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=device)


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


def normalize_grads(params: Iterable[torch.nn.Parameter], total_weight: float, info: DistInfo) -> None:
    """Turn the gradients into (sum over ranks) / ``total_weight``, the global normaliser of the step.

    DDP leaves the *mean* over ranks in ``.grad`` (sum / world_size), so the factor is world_size / total_weight.
    """
    factor = info.world_size / max(float(total_weight), 1e-12)
    if factor != 1.0:
        for p in params:
            if p.grad is not None:
                p.grad.mul_(factor)


def all_sum(value: float, info: DistInfo) -> float:
    if not info.enabled:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item())


def all_gather_object(obj: Any, info: DistInfo) -> list[Any]:
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def step_languages(local_langs: list[str], info: DistInfo) -> list[str]:
    """The sorted union of the languages every rank trains in this step."""
    union: set[str] = set()
    for langs in all_gather_object(sorted(set(local_langs)), info):
        union.update(langs)
    return sorted(union)


def any_rank(flag: bool, info: DistInfo) -> bool:
    """True if ``flag`` is true on any rank (e.g. a non-finite loss: every rank must skip together)."""
    return all_sum(1.0 if flag else 0.0, info) > 0


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
