"""The distillation loop, on Hugging Face Accelerate: one CPU process, or several processes /
GPUs under `accelerate launch` (DDP), with the same global batch and the same result.

Per optimizer step the run takes `batch_size` examples (data.py fixes which, from the seed and
the step), splits them evenly over the processes and, inside each, into micro-batches. Each
example's loss is divided by the global batch size x world-size-average that DDP applies, so the
gradient equals one process's mean over the global batch. After the step, gradients and weights
of pruned positions are zeroed (masks stay exact), the learning rate follows schedule.py, and
every `eval_every` steps the held-out metric decides the best checkpoint and early stopping.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from ..errors import SlimformerError
from ..model import Model
from .checkpoint import BEST, LAST, load_checkpoint, save_checkpoint
from .data import TrainSet
from .gradual import prune_to
from . import fsdp as fsdp_
from .losses import LossWeights, causal_losses, encoder_losses
from .schedule import cubic_sparsity, lr_factor, pruning_steps


class TrainingDiverged(SlimformerError):
    pass


@dataclass
class TrainPlan:
    steps: int
    batch_size: int
    micro_batch: int
    lr: float
    weight_decay: float
    warmup: int
    min_lr_ratio: float
    clip: float
    eval_every: int
    save_every: int
    patience: int
    seed: int
    losses: LossWeights
    fingerprint: str
    precision: str = "fp32"
    gradual: dict | None = None  # {"names", "start", "end", "every", "initial", "final"}
    restore_best: bool = True
    dropout: bool = False
    parallel: str = "ddp"  # ddp | fsdp (fsdp.py), when several processes train
    blocks: tuple = ()  # the student's block names (FSDP units)
    log_every: int = 10
    max_s: float | None = None  # wall-clock cap on the loop


@dataclass
class Evaluation:
    """Held-out quality of the student: fn(model) -> value, and which direction is better."""
    name: str
    fn: Callable[[Model], float]
    higher_is_better: bool
    # recorded beside it at every evaluation, never used to select (RecoverConfig.track: curves of
    # a task score, e.g. the report's own STS-B test, against steps)
    track: dict[str, Callable[[Model], float]] = field(default_factory=dict)


@dataclass
class TrainResult:
    history: list = field(default_factory=list)  # {"step", "loss", "lr", "tokens"} and {"step", "eval"}
    steps_done: int = 0
    tokens: int = 0
    best_step: int | None = None
    best_value: float | None = None
    stopped_early: bool = False
    stopped_by_time: bool = False
    resumed_from: int | None = None
    sparsity: float | None = None
    wall_s: float = 0.0


def _accelerator(precision: str):
    from accelerate import Accelerator, DistributedDataParallelKwargs
    from accelerate.state import AcceleratorState, PartialState
    if not PartialState._shared_state or PartialState().num_processes == 1:
        AcceleratorState._reset_state(reset_partial_state=False)  # a new precision in the same process
    kwargs = DistributedDataParallelKwargs(find_unused_parameters=True)  # e.g. BERT's pooler: no gradient
    return Accelerator(cpu=not torch.cuda.is_available(), mixed_precision="bf16" if precision == "bf16" else "no",
                       kwargs_handlers=[kwargs])


def _better(value: float, best: float | None, higher: bool) -> bool:
    return best is None or (value > best if higher else value < best)


def _trainable_state(module: torch.nn.Module) -> dict:
    names = {n for n, p in module.named_parameters() if p.requires_grad}
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items() if k in names}


def train(student: Model, teacher: Model, data: TrainSet, plan: TrainPlan, evaluation: Evaluation,
          work_dir: Path, resume: bool = False, progress: bool = True) -> TrainResult:
    """Distil `teacher` into `student` in place. The caller has set requires_grad on what trains."""
    t_start = time.perf_counter()
    acc = _accelerator(plan.precision)
    world, rank = acc.num_processes, acc.process_index
    if plan.batch_size % world:
        raise SlimformerError(f"batch_size {plan.batch_size} does not split over {world} processes; "
                              f"use a multiple of {world}")
    per_rank = plan.batch_size // world
    device = acc.device
    student.module.to(device)
    teacher.module.to(device).eval()  # its forward runs under no_grad: its flags stay as they are
    inner = student.module
    fsdp = plan.parallel == "fsdp" and world > 1
    result = TrainResult()
    best_value, bad_evals, start = None, 0, 0
    last, best_path = work_dir / LAST, work_dir / BEST
    if last.exists() and not resume:
        raise SlimformerError(f"{work_dir} holds a checkpoint of an earlier run; pass --resume to continue "
                              "it, or remove that folder to start over")
    state = load_checkpoint(last, plan.fingerprint) if resume and last.exists() else None
    if state is not None:  # the weights before any wrapping; the optimizer's state once it exists
        inner.load_state_dict(state["model"], strict=False)
        student.masks.clear()
        student.masks.update(state["masks"])
        start, best_value, bad_evals = state["step"], state["best_value"], state["bad_evals"]
        result.history, result.tokens, result.best_step = state["history"], state["tokens"], state["best_step"]
        result.resumed_from = start
    # FSDP: the optimizer is created over the sharded replica's parameters (fsdp.py); DDP wraps
    # the student itself and the optimizer holds its parameters
    trained = fsdp_.shard_replica(inner, list(plan.blocks), device) if fsdp else inner
    params = [p for p in trained.parameters() if p.requires_grad]
    if not params:
        raise SlimformerError("nothing to train: every parameter of the student is frozen")
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": plan.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=plan.lr)
    if state is not None:
        if fsdp:
            fsdp_.load_optimizer_state(trained, opt, state["optimizer"])
        else:
            opt.load_state_dict(state["optimizer"])
    masked = _masked_weights(trained, student.masks)
    module = trained if fsdp else acc.prepare_model(inner)
    module.train(plan.dropout)
    gradual_at = set()
    if plan.gradual:
        g = plan.gradual
        gradual_at = set(pruning_steps(g["start"], g["end"], g["every"]))
    need_hidden = (bool(plan.losses.hidden) and student.is_causal) or bool(plan.losses.layers)

    def losses(out_s, out_t, batch):
        if student.is_causal:
            return causal_losses(out_s, out_t, batch, plan.losses)
        return encoder_losses(out_s, out_t, batch, plan.losses, student.pooling, teacher.pooling)

    def save(path: Path, step: int, full: bool = True) -> None:
        if fsdp:  # collectives: every process gathers, the main one writes
            fsdp_.sync_into(trained, inner)
        optim = (fsdp_.optimizer_state(trained, opt) if fsdp else opt.state_dict()) if full else None
        if acc.is_main_process:
            state = {"fingerprint": plan.fingerprint, "step": step, "model": _trainable_state(inner),
                     "masks": dict(student.masks)}
            if full:  # the best checkpoint needs only the weights
                state.update({"optimizer": optim, "history": result.history, "tokens": result.tokens,
                              "best_value": best_value, "best_step": result.best_step, "bad_evals": bad_evals})
            save_checkpoint(path, state)
        acc.wait_for_everyone()

    bar = tqdm(total=plan.steps, initial=start, desc="recover", disable=not (progress and acc.is_main_process))
    window_loss, window_n, t_window, tok_window = 0.0, 0, time.perf_counter(), 0
    step = start
    for step in range(start, plan.steps):
        if step in gradual_at:
            g = plan.gradual
            s = cubic_sparsity(step, g["start"], g["end"], g["initial"], g["final"])
            result.sparsity = prune_to(student, g["names"], s, root=inner)
            masked = _masked_weights(inner, student.masks)
        for group in opt.param_groups:
            group["lr"] = plan.lr * lr_factor(step, plan.steps, plan.warmup, plan.min_lr_ratio)
        idx = data.indices(step * plan.batch_size, plan.batch_size, plan.seed)[rank * per_rank:(rank + 1) * per_rank]
        idx = data.by_length(idx)  # encoders: micro-batches of similar lengths pad less (the sum is the same)
        micro = [idx[i:i + plan.micro_batch] for i in range(0, len(idx), plan.micro_batch)]
        local_sum, local_tokens = 0.0, 0
        for j, mi in enumerate(micro):
            batch = {k: v.to(device) for k, v in data.batch(student, mi).items()}
            kw = {"use_cache": False} if student.is_causal else {}
            with torch.no_grad(), acc.autocast():
                out_t = teacher.module(**batch, output_hidden_states=need_hidden, **kw)
            sync = j == len(micro) - 1
            if fsdp:  # gradients reduce-scattered on the last micro-batch only
                module.set_requires_gradient_sync(sync)
            ctx = acc.no_sync(module) if not sync and world > 1 and not fsdp else _null()
            with ctx:
                with acc.autocast():
                    out_s = module(**batch, output_hidden_states=need_hidden, **kw)
                per_example = losses(out_s, out_t, batch)["total"]
                acc.backward(per_example.sum() / per_rank)
            local_sum += float(per_example.detach().sum())
            local_tokens += int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel()
        totals = acc.reduce(torch.tensor([local_sum, float(local_tokens)], device=device), reduction="sum")
        step_loss = float(totals[0]) / plan.batch_size
        if not math.isfinite(step_loss):
            keep = f"; the last good checkpoint is {last}" if last.exists() else ""
            raise TrainingDiverged(f"recover: the loss became {step_loss} at step {step + 1}{keep}; "
                                   "lower lr or raise clip, then rerun (with --resume to continue)")
        for w, keep in masked.values():
            if w.grad is not None:
                w.grad.mul_(keep)
        if plan.clip:
            acc.clip_grad_norm_(params, plan.clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            for w, keep in masked.values():
                w.mul_(keep)
        result.tokens += int(totals[1])
        tok_window += int(totals[1])
        window_loss += step_loss
        window_n += 1
        bar.update(1)
        done = step + 1
        if window_n == plan.log_every or done == plan.steps:
            dt = time.perf_counter() - t_window
            result.history.append({"step": done, "loss": window_loss / window_n, "lr": opt.param_groups[0]["lr"],
                                   "tokens": result.tokens})
            bar.set_postfix(loss=f"{window_loss / window_n:.4f}", tok_s=f"{tok_window / max(dt, 1e-9):.0f}")
            window_loss, window_n, t_window, tok_window = 0.0, 0, time.perf_counter(), 0
        out_of_time = plan.max_s is not None and _agreed(acc, time.perf_counter() - t_start > plan.max_s)
        if done % plan.eval_every == 0 or done == plan.steps or out_of_time:
            module.eval()
            if fsdp:
                fsdp_.sync_into(trained, inner)
            value = evaluation.fn(student)
            entry = {"step": done, "eval": value, "tokens": result.tokens}
            if evaluation.track:
                entry["track"] = {name: fn(student) for name, fn in evaluation.track.items()}
            module.train(plan.dropout)
            result.history.append(entry)
            # while gradual pruning is still raising sparsity, a checkpoint cannot be the final model
            final_masks = not plan.gradual or done >= plan.gradual["end"]
            if final_masks and _better(value, best_value, evaluation.higher_is_better):
                best_value, result.best_step, bad_evals = value, done, 0
                save(best_path, done, full=False)
            elif final_masks:
                bad_evals += 1
            if plan.patience and bad_evals >= plan.patience:
                result.stopped_early = True
                save(last, done)
                break
        if (plan.save_every and done % plan.save_every == 0) or out_of_time:
            save(last, done)
        if out_of_time:
            result.stopped_by_time = True
            break
    bar.close()
    result.steps_done = step + 1 if plan.steps > start else start
    result.best_value = best_value
    if fsdp:
        fsdp_.sync_into(trained, inner)
        module = inner
        del trained
    if plan.restore_best and best_path.exists() and result.best_step != result.steps_done:
        state = torch.load(best_path, map_location="cpu", weights_only=True)
        inner.load_state_dict(state["model"], strict=False)
        student.masks.clear()
        student.masks.update(state["masks"])
    acc.wait_for_everyone()
    student.module = acc.unwrap_model(module).to("cpu")
    for name in list(student.masks):  # gradual pruning made them on the training device
        student.masks[name] = student.masks[name].cpu()
    teacher.module.to("cpu")
    result.wall_s = time.perf_counter() - t_start
    return result


def _agreed(acc, flag: bool) -> bool:
    """True when any process says so: every rank must leave the loop at the same step."""
    if acc.num_processes == 1:
        return flag
    return bool(acc.reduce(torch.tensor([float(flag)], device=acc.device), reduction="sum").item() > 0)


def _masked_weights(root: torch.nn.Module, masks: dict) -> dict:
    """name -> (trainable weight, its mask on the weight's device) for every masked linear reachable
    by its name (under LoRA the masked weights are frozen inside peft's wrappers, and the masks
    hold by themselves)."""
    out = {}
    for name in masks:
        try:
            weight = getattr(root.get_submodule(name), "weight", None)
        except AttributeError:
            continue
        if isinstance(weight, torch.nn.Parameter) and weight.requires_grad:
            out[name] = (weight, fsdp_.sharded_like(masks[name], weight))
    return out


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
