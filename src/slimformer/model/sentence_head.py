"""What a sentence-transformers folder runs after pooling: Dense layers (a linear with bias and an
activation; sentence_transformers.models.Dense) and Normalize. Read from the files themselves
(sentence-transformers is not a dependency): `<path>/config.json` holds in_features, out_features,
bias and activation_function; the weights are `linear.weight` / `linear.bias` in
`<path>/model.safetensors` or `<path>/pytorch_model.bin`."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import CorruptModelError, UnsupportedModelError

# the class name at the end of activation_function -> (torch function, its ONNX op)
ACTIVATIONS = {
    "Identity": (lambda x: x, None), "Tanh": (torch.tanh, "Tanh"), "ReLU": (torch.relu, "Relu"),
    "Sigmoid": (torch.sigmoid, "Sigmoid"), "GELU": (torch.nn.functional.gelu, "Gelu"),
    "SiLU": (torch.nn.functional.silu, "silu"),
}
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass
class DenseLayer:
    """y = act(x W^T + b), W [out, in]; `path` is its folder inside the model folder (2_Dense)."""
    path: str
    weight: torch.Tensor
    bias: torch.Tensor | None
    activation: str  # a key of ACTIVATIONS

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.device, x.dtype)
        y = x @ w.t() + (self.bias.to(x.device, x.dtype) if self.bias is not None else 0)
        return ACTIVATIONS[self.activation][0](y)

    @property
    def onnx_op(self) -> str | None:
        return ACTIVATIONS[self.activation][1]


def read_dense(folder: Path, rel: str) -> tuple[DenseLayer, dict[str, bytes]]:
    """The Dense layer in folder/rel, and its files (kept so that a save or an export carries them)."""
    cfg_path = folder / rel / "config.json"
    if not cfg_path.is_file():
        raise CorruptModelError(f"{folder}: modules.json lists a Dense layer in {rel}/ but {rel}/config.json is "
                                "missing; copy that folder from the original model")
    files = {f"{rel}/config.json": cfg_path.read_bytes()}
    cfg = json.loads(files[f"{rel}/config.json"])
    act = str(cfg.get("activation_function", "torch.nn.modules.activation.Tanh")).rpartition(".")[2]
    if act not in ACTIVATIONS:
        raise UnsupportedModelError(f"{folder}/{rel}: Dense activation {cfg.get('activation_function')!r} is not "
                                    f"read here; supported: {', '.join(ACTIVATIONS)}")
    state = None
    for name in WEIGHT_FILES:
        path = folder / rel / name
        if path.is_file():
            files[f"{rel}/{name}"] = path.read_bytes()
            state = _read_state(path)
            break
    if state is None:
        raise CorruptModelError(f"{folder}/{rel}: no Dense weights ({' or '.join(WEIGHT_FILES)}); copy that "
                                "folder from the original model")
    weight, bias = state.get("linear.weight"), state.get("linear.bias")
    shape = (int(cfg.get("out_features", -1)), int(cfg.get("in_features", -1)))
    if weight is None or tuple(weight.shape) != shape or (cfg.get("bias", True) and bias is None):
        raise CorruptModelError(f"{folder}/{rel}: the Dense weights do not match its config.json (expected "
                                f"linear.weight {shape}{' and linear.bias' if cfg.get('bias', True) else ''}); "
                                "copy that folder from the original model")
    return DenseLayer(rel, weight.float(), bias.float() if bias is not None else None, act), files


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated file, or a pickle holding more than tensors (refused, not run)
        line = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CorruptModelError(f"{path}: the Dense weights cannot be read ({line}); copy that folder from "
                                "the original model") from None


def narrow_inputs(dense: tuple[DenseLayer, ...], files: dict[str, bytes], keep: torch.Tensor,
                  hidden: int) -> tuple[DenseLayer, ...]:
    """After hidden channels were trimmed to `keep`: the first Dense layer reads only those columns
    (its weight sliced, its files in `files` rewritten: config.json in_features, the weights as
    model.safetensors), and the Pooling config's word_embedding_dimension becomes `hidden`."""
    for rel, data in list(files.items()):
        if rel.endswith("/config.json") and b"word_embedding_dimension" in data:
            cfg = json.loads(data)
            if "word_embedding_dimension" in cfg and "in_features" not in cfg:
                cfg["word_embedding_dimension"] = hidden
                files[rel] = (json.dumps(cfg, indent=2) + "\n").encode()
    if not dense:
        return dense
    first = dense[0]
    new = DenseLayer(first.path, first.weight[:, keep].clone(), first.bias, first.activation)
    cfg = json.loads(files[f"{first.path}/config.json"])
    cfg["in_features"] = int(keep.numel())
    files[f"{first.path}/config.json"] = (json.dumps(cfg, indent=2) + "\n").encode()
    for name in WEIGHT_FILES:
        files.pop(f"{first.path}/{name}", None)
    from safetensors.torch import save
    state = {"linear.weight": new.weight.contiguous()}
    if new.bias is not None:
        state["linear.bias"] = new.bias.contiguous()
    files[f"{first.path}/model.safetensors"] = save(state)
    return (new,) + tuple(dense[1:])
