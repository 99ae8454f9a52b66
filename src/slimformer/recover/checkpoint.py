"""Training checkpoints: everything a resumed run needs to continue exactly where it stopped.

A checkpoint holds the student's state dict, the optimizer state, the step, the masks (gradual
pruning changes them), the evaluation history, the best value so far and the early-stopping
counter. Learning rate, data order and pruning schedule are functions of the step, so nothing
else is needed for a resumed run to reach the same weights as an uninterrupted one.
Written to a temporary file and renamed, so a run killed while saving leaves the previous
checkpoint intact; loaded with weights_only=True (no code in checkpoints).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import SlimformerError

LAST, BEST = "last.pt", "best.pt"


class CheckpointError(SlimformerError):
    pass


def save_checkpoint(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, fingerprint: str) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated or foreign file
        raise CheckpointError(f"cannot read checkpoint {path} ({type(e).__name__}); remove it to start over") from None
    if state.get("fingerprint") != fingerprint:
        raise CheckpointError(f"checkpoint {path} was written for another model or recover settings; "
                              "remove its folder to start over, or resume with the same recipe")
    return state
