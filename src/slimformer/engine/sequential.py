"""The sequential calibration engine: block by block, with the rewritten block feeding the next.

1. Capture the inputs of block 0 for every calibration sample (a pre-hook stops the forward there),
   and the side inputs (mask, rotary tables) of the first block of every other attention type:
   sliding and global layers get different ones (Gemma 3, windowed Qwen / Mistral). No KV cache.
2. For each block: run the samples through it with hooks collecting per-linear statistics (the
   pass stops as soon as every requested input is seen); let the method rewrite the block; run
   the samples through the *rewritten* block; its outputs are the next block's inputs. Only one
   block's activations are held at a time; side inputs equal for every sample (rotary tables)
   are held once, and freed heap is returned to the OS between blocks and every TRIM_EVERY
   samples (heap.py), so the stage's resident memory follows its live tensors.
A lazily loaded model (model/lazy.py) has one block resident at a time: the engine holds the
block across its three steps and commits the rewritten block to disk after (`rewrites=False`
for a pass that only measures: the block is dropped unchanged). With a CUDA device (the
calibration's `device`, auto by default) the samples live on it and each block is moved there for
its three steps and back after: one block on the accelerator, the rest where it was loaded.
Works through the ArchMap only: no per-family code.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
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
    # Side inputs (everything but the hidden state) of the other attention types' blocks: Gemma 3
    # and windowed Qwen / Mistral give sliding and global layers their own mask (and Gemma 3 its own
    # rotary tables), so block 0's side inputs are wrong for a block of another type.
    side: dict = field(default_factory=dict)  # attention_type -> (args[1:], kwargs without hidden_states)


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


def _without_cache(kwargs: dict) -> dict:
    """The block's keyword inputs without a KV cache: an encoder built on a decoder stack (Gemma 3
    bidirectional) is handed one by default, and every later run of the block would append to it."""
    kwargs = dict(kwargs)
    if "past_key_values" in kwargs:
        kwargs["past_key_values"] = None
    return kwargs


def _side_inputs(args: tuple, kwargs: dict, prev: tuple | None) -> tuple[tuple, dict]:
    args = tuple(a.detach() if torch.is_tensor(a) else a for a in args[1:])
    kwargs = {k: v for k, v in _without_cache(kwargs).items() if k != "hidden_states"}
    if prev is not None:
        args = _share_repeats(args, prev[0])
        kwargs = {k: _share_repeats(v, prev[1].get(k)) for k, v in kwargs.items()}
    return args, kwargs


def _first_of_each_type(model: Model) -> dict[str, int]:
    first: dict[str, int] = {}
    for blk in model.arch.blocks:
        first.setdefault(blk.attention_type, blk.index)
    return first


@torch.no_grad()
def capture_block_inputs(model: Model, calib: CalibrationSet) -> list[_Sample]:
    """Block 0's inputs for every calibration sample, and the side inputs of the first block of
    every other attention type (the forward runs up to that block, once)."""
    blocks = model.arch.blocks
    first = _first_of_each_type(model)
    last = max(first.values())
    samples: list[_Sample] = []
    current: dict = {}

    def pre_hook_0(module, args, kwargs):
        args = tuple(a.detach() if torch.is_tensor(a) else a for a in args)
        kwargs = _without_cache(kwargs)
        if samples:  # rotary tables, position ids, masks: usually the same for every window
            prev = samples[-1]
            args = args[:1] + _share_repeats(args[1:], prev.args[1:])
            kwargs = {k: v if k == "hidden_states" else _share_repeats(v, prev.kwargs.get(k))
                      for k, v in kwargs.items()}
        samples.append(_Sample(args, kwargs, current.get("mask")))
        if last == 0:
            raise _Captured

    def side_hook(kind: str, stop: bool):
        def hook(module, args, kwargs):
            prev = samples[-2].side.get(kind) if len(samples) > 1 else None
            samples[-1].side[kind] = _side_inputs(args, kwargs, prev)
            if stop:
                raise _Captured
        return hook

    handles = [get_module(model.module, blocks[0].name).register_forward_pre_hook(pre_hook_0, with_kwargs=True)]
    for kind, i in first.items():
        if i:
            handles.append(get_module(model.module, blocks[i].name).register_forward_pre_hook(
                side_hook(kind, i == last), with_kwargs=True))
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
        for h in handles:
            h.remove()
    return samples


def _hidden(sample: _Sample) -> torch.Tensor:
    return sample.args[0] if sample.args else sample.kwargs["hidden_states"]


def _with_hidden(sample: _Sample, hidden: torch.Tensor) -> None:
    if sample.args:
        sample.args = (hidden,) + sample.args[1:]
    else:
        sample.kwargs["hidden_states"] = hidden


@torch.no_grad()
def _run_block(block, sample: _Sample, attention_type: str | None = None, precision=None) -> torch.Tensor:
    with precision or contextlib.nullcontext():
        return _forward_block(block, sample, attention_type)


def _forward_block(block, sample: _Sample, attention_type: str | None) -> torch.Tensor:
    if attention_type in sample.side:
        args, kwargs = sample.side[attention_type]
        hidden = _hidden(sample)
        if sample.args:
            out = block(hidden, *args, **kwargs)
        else:
            out = block(*args, hidden_states=hidden, **kwargs)
    else:
        out = block(*sample.args, **sample.kwargs)
    return out[0] if isinstance(out, tuple) else out


def engine_device(model: Model, calib: CalibrationSet) -> torch.device:
    """Where blocks run: the calibration set's device (CUDA when present, by default), or the
    model's own device when that is of the same type."""
    dev = torch.device(getattr(calib, "device", "cpu"))
    return model.device if dev.type == model.device.type else dev


def _to(value, device: torch.device):
    if torch.is_tensor(value):
        return value.to(device)
    if isinstance(value, (tuple, list)):
        return type(value)(_to(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    return value


def _samples_to(samples: list[_Sample], device: torch.device) -> None:
    """Move every calibration sample's inputs to the device, keeping shared side inputs shared."""
    moved: dict[int, torch.Tensor] = {}

    def to(value):
        if torch.is_tensor(value):
            if id(value) not in moved:
                moved[id(value)] = value.to(device)
            return moved[id(value)]
        if isinstance(value, (tuple, list)):
            return type(value)(to(v) for v in value)
        if isinstance(value, dict):
            return {k: to(v) for k, v in value.items()}
        return value
    for s in samples:
        s.args, s.kwargs, s.token_mask, s.side = to(s.args), to(s.kwargs), to(s.token_mask), to(s.side)


@contextlib.contextmanager
def on_device(block: torch.nn.Module, device: torch.device, home: torch.device):
    """The block on the engine's device for its statistics, rewrite and propagation, then back
    (the rest of the model never leaves `home`: only one block is on the accelerator)."""
    if device == home:
        yield
        return
    block.to(device)
    try:
        yield
    finally:
        block.to(home)
        if device.type == "cuda":
            torch.cuda.empty_cache()


def compute_precision(model: Model, calib: CalibrationSet):
    """bfloat16 block forwards (`calibration: {dtype: bfloat16}`) through autocast: matmuls in
    bf16 (native on CPUs with AVX-512 BF16 / AMX, and on GPUs), fp32 weights kept, so the methods
    rewrite the fp32 weights from statistics that the hooks accumulate in fp32 / fp64 (stats.py)."""
    if getattr(calib, "dtype", "float32") != "bfloat16":
        return contextlib.nullcontext()
    return torch.autocast(engine_device(model, calib).type, dtype=torch.bfloat16)


def block_scope(model: Model, blk: BlockMap, rewrites: bool = True):
    """The block resident while the body runs (a lazily loaded model reads it from disk, and
    writes it back after if `rewrites`); nothing to do for a model in memory."""
    if model.lazy is None:
        return contextlib.nullcontext()
    return model.lazy.hold(get_module(model.module, blk.name), blk.name, commit=rewrites)


def run_sequential(model: Model, calib: CalibrationSet, rewrite: Rewrite, want: set[str],
                   select: Callable[[BlockMap], list[str]] | None = None, progress: bool = True,
                   desc: str = "blocks", rewrites: bool = True) -> list[dict]:
    """Run `rewrite` on every block in order; returns the per-block logs."""
    was_training = model.module.training
    model.module.eval()
    with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=getattr(calib, "dtype", "float32") == "bfloat16"):
        samples = capture_block_inputs(model, calib)  # the embeddings run where the model is
    if model.lazy is not None:
        model.lazy.release_passing()  # blocks the capture's forward stopped inside
    device = engine_device(model, calib)
    _samples_to(samples, device)
    logs = []
    try:
        for blk in tqdm(model.arch.blocks, desc=desc, disable=not progress, leave=False):
            with block_scope(model, blk, rewrites), on_device(get_module(model.module, blk.name), device,
                                                              model.device):
                if _step(model, blk, samples, rewrite, want, select, logs, calib):
                    break
    finally:
        model.module.train(was_training)
    return logs


def _step(model: Model, blk: BlockMap, samples: list[_Sample], rewrite: Rewrite, want: set[str],
          select, logs: list[dict], calib: CalibrationSet) -> bool:
    """Statistics, rewrite and propagation of one block; True after the last block. Only the block
    forwards run in the calibration precision: the rewrite (GPTQ's solve, say) runs in fp32 / fp64."""
    release_free_heap()  # the previous block's propagation and rewrite temporaries
    block = get_module(model.module, blk.name)
    chosen = set(select(blk) if select else blk.linears)
    groups = [[n for n in g if n in chosen] for g in blk.input_groups]
    collector = StatsCollector(model.module, groups, want)
    try:
        for i, s in enumerate(samples):
            collector.start_sample(s.token_mask)
            try:
                _run_block(block, s, blk.attention_type, compute_precision(model, calib))
            except PassComplete:
                pass
            _every(i, TRIM_EVERY, release_free_heap)
    finally:
        collector.close()
    release_free_heap()
    logs.append(rewrite(model, blk, collector.stats))
    del collector
    if blk is model.arch.blocks[-1]:
        return True  # nothing reads the last block's outputs
    for i, s in enumerate(samples):  # the rewritten block's outputs feed the next block
        _with_hidden(s, _run_block(block, s, blk.attention_type, compute_precision(model, calib)))
        _every(i, TRIM_EVERY, release_free_heap)
    return False
