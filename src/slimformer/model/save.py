"""Save a Model as a standard HF folder (safetensors) that plain transformers can load."""
from __future__ import annotations

import json
import os
from pathlib import Path

import slimformer

from ..atomic import atomic_dir
from .model import Model

META_FILE = "slimformer.json"


def save(model: Model, out: str | os.PathLike, overwrite: bool = False) -> Path:
    out = Path(out)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        write_folder(model, tmp)
    return out


def write_folder(model: Model, folder: Path) -> None:
    state = model.module.state_dict()
    # GPT-2 Conv1D weights were turned into Linear [out, in] at load; store them as
    # transformers expects ([in, out]) so the folder loads without slimformer.
    for name in model.arch.conv1d_transposed:
        state[f"{name}.weight"] = state[f"{name}.weight"].t().contiguous()
    model.module.save_pretrained(folder, state_dict=state)
    model.tokenizer.save_pretrained(folder)
    for rel, data in model.extra_files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    meta = {"slimformer_version": slimformer.__version__, "source": model.source, "stages": model.log}
    (folder / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
