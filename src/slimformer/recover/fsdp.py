"""Fully sharded data parallel recovery (`recover: {parallel: fsdp}`), on torch's FSDP2.

Accelerate wraps FSDP only on GPUs (with several CPU processes it falls back to DDP), and torch's
`fully_shard` runs on gloo as well as NCCL, so slimformer calls it directly and keeps Accelerate
for the process group, the reductions and autocast. The student's own module stays a plain
module (it is what evaluation, saving and export read); training runs on a sharded replica of it:
each block one FSDP unit, then the root. Each process holds 1/world of the replica's weights,
gradients and AdamW moments (with DDP every process holds all of them), and gathers a block's
weights only while that block runs. The replica's weights are copied back into the student
(`sync_into`, a collective) before every evaluation, every checkpoint and at the end, so the
held-out scores, checkpoints and the result are those of the trained weights, in the same
format as under DDP; the optimizer state is checkpointed whole (gathered) and scattered again
on resume.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


def shard_replica(inner: nn.Module, block_names: list[str], device: torch.device) -> nn.Module:
    """A copy of `inner` on `device`, every block and then the root wrapped by fully_shard."""
    from torch.distributed.fsdp import fully_shard
    replica = copy.deepcopy(inner).to(device)
    for name in block_names:
        fully_shard(replica.get_submodule(name))
    fully_shard(replica)
    return replica


def sharded_like(keep: torch.Tensor, weight) -> torch.Tensor:
    """A pruning mask split over the processes as the weight is (a DTensor of the same layout)."""
    from torch.distributed.tensor import DTensor, distribute_tensor
    if not isinstance(weight, DTensor):
        return keep.to(weight.device)
    return distribute_tensor(keep.to(weight.device_mesh.device_type), weight.device_mesh, weight.placements)


def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions
    return StateDictOptions(full_state_dict=True, **kw)


def sync_into(replica: nn.Module, inner: nn.Module) -> None:
    """The replica's trained weights, gathered whole, into the plain student (every process)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict
    trainable = {n for n, p in replica.named_parameters() if p.requires_grad}
    # whole on every process (cpu_offload would leave the others empty): each one's student must
    # hold the trained weights, or their held-out scores, and so their control flow, would part
    full = get_model_state_dict(replica, options=_options(ignore_frozen_params=True))
    own = inner.state_dict()
    with torch.no_grad():
        for name, value in full.items():
            if name in trainable and name in own:
                own[name].copy_(value.to(own[name].device))


def optimizer_state(replica: nn.Module, opt: torch.optim.Optimizer) -> dict:
    """The optimizer's state gathered whole, keyed by parameter name, on the main process (collective)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict
    return get_optimizer_state_dict(replica, opt, options=_options(cpu_offload=True))


def load_optimizer_state(replica: nn.Module, opt: torch.optim.Optimizer, state: dict) -> None:
    """Scatter a whole optimizer state (from optimizer_state) onto this process's shards."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
    set_optimizer_state_dict(replica, opt, state, options=StateDictOptions(full_state_dict=True))
