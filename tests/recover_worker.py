"""A recover run in its own process, for the tests that kill a run midway or launch two processes.

    python tests/recover_worker.py MODEL_DIR OUT.pt [--steps N] [--checkpoints DIR] [--resume] [--slow S]
    torchrun --nproc_per_node 2 tests/recover_worker.py ... [--parallel fsdp]

Prunes the model (magnitude, 50 %) so masks are in play, distils it from the original, and
writes the final state dict (main process only).
"""
from __future__ import annotations

import argparse
import copy
import time

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

torch.set_num_threads(1)

from slimformer.model import load  # noqa: E402
from slimformer.prune.stage import PruneConfig, prune_model  # noqa: E402
from slimformer.recover import RecoverConfig, recover  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("out")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--checkpoints")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--slow", type=float, default=0.0, help="seconds of sleep after each optimizer step")
    p.add_argument("--parallel", default="ddp")
    a = p.parse_args()
    original = load(a.model)
    student = copy.deepcopy(original)
    prune_model(student, PruneConfig(method="magnitude", sparsity=0.5), progress=False)
    if a.slow:
        register_optimizer_step_post_hook(lambda *_: time.sleep(a.slow))
    cfg = RecoverConfig(steps=a.steps, batch_size=a.batch, seq_len=32, holdout=2, lr=1e-3, eval_every=4,
                        save_every=2, data=["wikitext2:validation"], checkpoint_dir=a.checkpoints,
                        keep_checkpoints=True, parallel=a.parallel)
    log = recover(student, original, cfg, resume=a.resume, progress=False)
    from accelerate import PartialState
    state = PartialState()
    if state.is_main_process:
        torch.save({"state": student.module.state_dict(), "masks": dict(student.masks),
                    "log": {"steps": log.steps, "resumed_from": log.resumed_from},
                    "world": state.num_processes, "backend": str(state.backend)}, a.out)


if __name__ == "__main__":
    main()
