"""Where slimformer's and llm-compressor's masks for the same method part ways, block by block.

    python benchmarks/prune_mask_agreement.py --run wanda:2:4      # SmolLM2, the default windows

Both tools prune copies of one model on the very same calibration windows (as in
prune_vs_peer.py); the script prints, per block, the fraction of weights whose keep/prune
decision agrees, and both perplexities. Same algorithm + same data should agree to the last
near-tie in block 0; disagreement that grows with depth is numerical drift carried forward by
the sequential propagation, not a different method.
"""
from __future__ import annotations

import argparse

import torch

import slimformer
from slimformer.data.calibration import calibration_set
from slimformer.model import get_module

from common import quality
from prune_vs_peer import label, parse_run, run_peer, run_slimformer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--run", default="wanda:2:4")
    p.add_argument("--samples", type=int, default=None)
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--windows", type=int, default=64)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    base = slimformer.load(args.model)
    cal = {"samples": args.samples, "seq_len": args.seq_len}
    calib = calibration_set(base, **cal)
    cfg = parse_run(args.run)
    ours = run_slimformer(base, cfg, cal)[0]
    peer = run_peer(base, cfg, calib)[0]
    print(f"{label(cfg)}: keep/prune agreement per block (min over the block's linears)")
    for blk in base.arch.blocks:
        agree = []
        for name in blk.linears:
            a = get_module(ours.module, name).weight == 0
            b = get_module(peer.module, name).weight == 0
            agree.append(float((a == b).float().mean()))
        print(f"block {blk.index:2d}: mean {sum(agree) / len(agree):.6f}  min {min(agree):.6f}", flush=True)
    print(f"perplexity: slimformer {quality(ours, args.windows, args.seq_len):.2f}  "
          f"llm-compressor {quality(peer, args.windows, args.seq_len):.2f}", flush=True)


if __name__ == "__main__":
    main()
