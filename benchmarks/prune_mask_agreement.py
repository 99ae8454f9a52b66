"""Where slimformer's and llm-compressor's masks for the same method part ways, block by block.

    python benchmarks/prune_mask_agreement.py --run wanda:2:4      # SmolLM2, the default windows

Both tools prune copies of one model on the very same calibration windows (as in
prune_vs_peer.py); the script prints, per block, how many weights' keep/prune decisions differ,
how far apart the block's input activations are in the two tools' calibration passes (first
window, relative L2 and largest absolute difference), for Wanda N:M how close the differently
decided groups were by slimformer's scores, and both perplexities.
Same algorithm + same data should agree to the last near-tie in block 0; inputs that match to
float rounding (~1e-7) until a block where a few masks differ, then diverge, show the method's
sensitivity to near-ties rather than a different method.
"""
from __future__ import annotations

import argparse
import copy

import torch

import slimformer
from slimformer.data.calibration import calibration_set
from slimformer.model import get_module
from slimformer.prune import stage as prune_stage
from slimformer.prune.masks import parse_pattern
from slimformer.prune.methods import wanda_score

from common import add_calibration_arguments, quality
from prune_vs_peer import label, parse_run, run_peer, run_slimformer


def first_block_inputs(model) -> dict[int, torch.Tensor]:
    """Records, per block, the hidden states of the first real (non-meta: llm-compressor traces
    on the meta device first) call, i.e. the first calibration window; hooks stay on the copy."""
    seen: dict[int, torch.Tensor] = {}
    for blk in model.arch.blocks:
        def pre(module, args, kwargs, i=blk.index):
            h = args[0] if args else kwargs["hidden_states"]
            if i not in seen and h.device.type != "meta":
                seen[i] = h.detach().double().clone()
        get_module(model.module, blk.name).register_forward_pre_hook(pre, with_kwargs=True)
    return seen


def _widest_gap(score: torch.Tensor, differs: torch.Tensor, nm: tuple[int, int]) -> float:
    """Among the N:M groups the two tools decided differently, the widest relative gap between
    the N-th and (N+1)-th largest score: ~1e-7 means the groups were ties to float rounding."""
    n, m = nm
    groups = score.reshape(score.shape[0], -1, m)
    hit = differs.reshape(groups.shape).any(-1)
    top = groups[hit].sort(-1, descending=True).values
    return float(((top[:, n - 1] - top[:, n]) / top[:, n - 1]).max())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_calibration_arguments(p)
    p.add_argument("--run", default="wanda:2:4")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    base = slimformer.load(args.model)
    cal = {"samples": args.samples, "seq_len": args.seq_len, "seed": args.seed}
    calib = calibration_set(base, **cal)
    cfg = parse_run(args.run)
    ours, peer = copy.deepcopy(base), copy.deepcopy(base)
    seen_ours, seen_peer = first_block_inputs(ours), first_block_inputs(peer)
    scores = []  # slimformer's Wanda scores, in pruning order (every block linear: no ignore list)
    real_wanda_mask = prune_stage.wanda_mask

    def recording_wanda_mask(W, norms, sparsity, nm=None):
        scores.append(wanda_score(W, norms))
        return real_wanda_mask(W, norms, sparsity, nm)

    prune_stage.wanda_mask = recording_wanda_mask
    try:
        run_slimformer(base, cfg, cal, model=ours)
    finally:
        prune_stage.wanda_mask = real_wanda_mask
    run_peer(base, cfg, calib, model=peer)
    names = [n for blk in base.arch.blocks for n in blk.linears]
    score_of = dict(zip(names, scores)) if len(scores) == len(names) else {}
    nm = parse_pattern(cfg.pattern)
    print(f"{label(cfg)}: per block, the weights whose keep/prune decision differs, the agreement "
          f"(lowest over the block's linears), the relative / largest difference of the block's input in "
          f"the first calibration window" + (", and the widest relative score gap (kept vs pruned, by "
                                              "slimformer's scores) among groups decided differently"
                                              if score_of and nm else ""))
    for blk in base.arch.blocks:
        agree, differ, widest = [], 0, 0.0
        for name in blk.linears:
            a = get_module(ours.module, name).weight == 0
            b = get_module(peer.module, name).weight == 0
            agree.append(float((a == b).float().mean()))
            differ += int((a != b).sum())
            if name in score_of and nm and bool((a != b).any()):
                widest = max(widest, _widest_gap(score_of[name], a != b, nm))
        x, y = seen_ours.get(blk.index), seen_peer.get(blk.index)
        gap = (f"  input rel {float((x - y).norm() / y.norm()):.2e}  max {float((x - y).abs().max()):.3g}"
               if x is not None and y is not None else "")
        tie = f"  score gap {widest:.1e}" if differ and score_of and nm else ""
        print(f"block {blk.index:2d}: {differ:7d} differ  min agreement {min(agree):.6f}{gap}{tie}", flush=True)
    print(f"perplexity: slimformer {quality(ours, args.windows, args.seq_len):.2f}  "
          f"llm-compressor {quality(peer, args.windows, args.seq_len):.2f}", flush=True)


if __name__ == "__main__":
    main()
