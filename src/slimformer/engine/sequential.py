"""The sequential calibration engine: block by block, with the rewritten block feeding the next.

1. Capture the inputs of block 0 for every calibration sample (a pre-hook stops the forward there).
2. For each block: run the samples through it with hooks collecting per-linear statistics (the
   pass stops as soon as every requested input is seen); let the method rewrite the block; run
   the samples through the *rewritten* block; its outputs are the next block's inputs. Only one
   block's activations are held at a time; side inputs equal for every sample (rotary tables)
   are held once, and freed heap is returned to the OS between blocks and every TRIM_EVERY
   samples (heap.py), so the stage's resident memory follows its live tensors.
Works through the ArchMap only: no per-family code.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from tqdm.auto import tqdm

from ..data.calibration import CalibrationSet
from ..heap import release_free_heap
from ..model import BlockMap, Model, get_module
from .stats import LinearStats, PassComplete, StatsCollector

TRIM_EVERY = 8  # samples between returns of freed heap to the OS (see heap.py)


def _every(i: int, n: int, fn) -> None:
    if n and i % n == n - 1:
        fn()


# rewrite(model, block, stats) -> log dict for this block
Rewrite = Callable[[Model, BlockMap, dict[str, LinearStats]], dict]


class _Captured(Exception):
    pass


@dataclass
class _Sample:
    args: tuple
    kwargs: dict
    token_mask: torch.Tensor | None  # [batch, seq] bool; None when every position is real


def _share_repeats(value, prev):
    """`value` with every tensor equal to its counterpart in `prev` replaced by that one, so
    identical per-sample inputs (SmolLM2's rotary cos/sin: 0.5 MiB a window) are held once."""
    if torch.is_tensor(value):
        same = (torch.is_tensor(prev) and prev.shape == value.shape and prev.dtype == value.dtype
                and prev.device == value.device and torch.equal(prev, value))
        return prev if same else value
    if isinstance(value, (tuple, list)) and isinstance(prev, (tuple, list)) and len(prev) == len(value):
        return type(value)(_share_repeats(v, p) for v, p in zip(value, prev))
    return value


@torch.no_grad()
def capture_block_inputs(model: Model, calib: CalibrationSet) -> list[_Sample]:
    block0 = get_module(model.module, model.arch.blocks[0].name)
    samples: list[_Sample] = []
    current: dict = {}

    def pre_hook(module, args, kwargs):
        args = tuple(a.detach() if torch.is_tensor(a) else a for a in args)
        kwargs = dict(kwargs)
        if samples:  # rotary tables, position ids, masks: usually the same for every window
            prev = samples[-1]
            args = args[:1] + _share_repeats(args[1:], prev.args[1:])
            kwargs = {k: v if k == "hidden_states" else _share_repeats(v, prev.kwargs.get(k))
                      for k, v in kwargs.items()}
        samples.append(_Sample(args, kwargs, current.get("mask")))
        raise _Captured

    handle = block0.register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        for batch in calib.batches:
            mask = batch.get("attention_mask")
            current["mask"] = None if mask is None or bool(mask.all()) else mask.bool()
            kw = {"use_cache": False} if model.is_causal else {}
            try:
                model.module(**batch, **kw)
            except _Captured:
                pass
    finally:
        handle.remove()
    return samples


def _hidden(sample: _Sample) -> torch.Tensor:
    return sample.args[0] if sample.args else sample.kwargs["hidden_states"]


def _with_hidden(sample: _Sample, hidden: torch.Tensor) -> None:
    if sample.args:
        sample.args = (hidden,) + sample.args[1:]
    else:
        sample.kwargs["hidden_states"] = hidden


@torch.no_grad()
def _run_block(block, sample: _Sample) -> torch.Tensor:
    out = block(*sample.args, **sample.kwargs)
    return out[0] if isinstance(out, tuple) else out


def run_sequential(model: Model, calib: CalibrationSet, rewrite: Rewrite, want: set[str],
                   select: Callable[[BlockMap], list[str]] | None = None, progress: bool = True,
                   desc: str = "blocks") -> list[dict]:
    """Run `rewrite` on every block in order; returns the per-block logs."""
    was_training = model.module.training
    model.module.eval()
    samples = capture_block_inputs(model, calib)
    logs = []
    try:
        for blk in tqdm(model.arch.blocks, desc=desc, disable=not progress, leave=False):
            release_free_heap()  # the previous block's propagation and rewrite temporaries
            block = get_module(model.module, blk.name)
            chosen = set(select(blk) if select else blk.linears)
            groups = [[n for n in g if n in chosen] for g in blk.input_groups]
            collector = StatsCollector(model.module, groups, want)
            try:
                for i, s in enumerate(samples):
                    collector.start_sample(s.token_mask)
                    try:
                        _run_block(block, s)
                    except PassComplete:
                        pass
                    _every(i, TRIM_EVERY, release_free_heap)
            finally:
                collector.close()
            release_free_heap()
            logs.append(rewrite(model, blk, collector.stats))
            del collector
            if blk is model.arch.blocks[-1]:
                break  # nothing reads the last block's outputs
            for i, s in enumerate(samples):  # the rewritten block's outputs feed the next block
                _with_hidden(s, _run_block(block, s))
                _every(i, TRIM_EVERY, release_free_heap)
    finally:
        model.module.train(was_training)
    return logs
