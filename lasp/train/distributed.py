"""Data-parallel training under ``torchrun``.

``torchrun --nproc_per_node N -m lasp <stage> RECIPE`` starts N ranks; each
draws its own batches (the sampler is sharded by rank) and may train a
different language. Gradients are summed across ranks with one all-reduce per
step (DDP's semantics) and then divided by the global normaliser (number of
masked frames for pre-training, utterances for CTC), so every rank applies the
identical update and the ranks' weights stay identical.

Why not ``torch.nn.parallel.DistributedDataParallel`` itself: its reducer
expects every rank to produce gradients for the same parameters, but here a
rank's step touches only its language's sub-network or adapter, so ranks
differ in which parameters receive gradients. The explicit all-reduce treats a
missing gradient as zeros, which is exactly right for confined updates.
The confined optimizer then restores every weight outside the union of *all*
ranks' languages of the step (see :func:`step_languages`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterable

import torch
import torch.distributed as dist


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


def pick_device(pref: str, local_rank: int = 0) -> torch.device:
    if pref == "cpu" or (pref == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        from lasp.errors import ConfigError

        raise ConfigError("key 'device' is 'cuda' but no CUDA device is available")
    return torch.device("cuda", local_rank)


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


def all_reduce_grads(params: Iterable[torch.nn.Parameter], divisor: float, info: DistInfo) -> None:
    """Sum gradients over ranks (missing ones count as zeros) and divide by ``divisor``."""
    params = [p for p in params if p.requires_grad]
    if info.enabled:
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        dist.all_reduce(flat)
        offset = 0
        for p in params:
            n = p.numel()
            p.grad.copy_(flat[offset:offset + n].view_as(p))
            offset += n
    if divisor != 1.0:
        for p in params:
            if p.grad is not None:
                p.grad.div_(divisor)


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
