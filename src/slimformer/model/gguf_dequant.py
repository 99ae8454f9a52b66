"""A GGUF file dequantized tensor by tensor into a sharded safetensors folder.

transformers' GGUF loading dequantizes every tensor into one dict and then builds the model from
it: the whole model in fp32 in memory at once (a 7B Q4 file becomes 27 GB). Here each tensor is
read from the memory-mapped file, dequantized by the gguf package, given transformers' own
per-architecture fix-ups (its TensorProcessor: Llama's Q/K row order undone, Gemma's norms
shifted by one) and name mapping, and written to the current shard; a shard is flushed when it
reaches SHARD_BYTES. Peak memory is one shard plus one tensor.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

SHARD_BYTES = 1 << 30


class ShardWriter:
    """Tensors appended in order, written as model-0000i-of-0000n.safetensors with an index."""

    def __init__(self, folder: Path, max_bytes: int = SHARD_BYTES):
        self.folder, self.max_bytes = folder, max_bytes
        self.pending: dict[str, torch.Tensor] = {}
        self.size = 0
        self.files: list[list[str]] = []
        self.total = 0

    def add(self, name: str, t: torch.Tensor) -> None:
        nbytes = t.numel() * t.element_size()
        if self.pending and self.size + nbytes > self.max_bytes:
            self.flush()
        self.pending[name] = t.contiguous()
        self.size += nbytes
        self.total += nbytes

    def flush(self) -> None:
        from safetensors.torch import save_file
        if not self.pending:
            return
        save_file(self.pending, str(self.folder / f"shard-{len(self.files):05d}.tmp"), metadata={"format": "pt"})
        self.files.append(list(self.pending))
        self.pending, self.size = {}, 0

    def close(self) -> None:
        """Name the shards now that their number is known, and write the index."""
        self.flush()
        n, weight_map = len(self.files), {}
        for i, names in enumerate(self.files):
            final = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            (self.folder / f"shard-{i:05d}.tmp").rename(self.folder / final)
            weight_map.update({k: final for k in names})
        (self.folder / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {"total_size": self.total}, "weight_map": weight_map}, indent=2) + "\n")


def dequantize_gguf(gguf_path: Path, cfg, folder: Path, dtype: torch.dtype = torch.float32) -> int:
    """Write the GGUF's weights as HF tensors of the model `cfg` describes; returns the tensor count."""
    from accelerate import init_empty_weights
    from gguf import GGUFReader, dequantize
    from transformers import AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import (TENSOR_PROCESSORS, TensorProcessor,
                                                          get_gguf_hf_weights_map, load_gguf_checkpoint)
    parsed = load_gguf_checkpoint(str(gguf_path), return_tensors=False)  # header only: config facts
    reader = GGUFReader(str(gguf_path))  # memory-mapped
    arch = str(bytes(reader.fields["general.architecture"].parts[-1]), "utf-8")
    processor = TENSOR_PROCESSORS.get(arch, TensorProcessor)(config=parsed["config"])
    with init_empty_weights():
        skeleton = AutoModelForCausalLM.from_config(cfg)
    mapping = get_gguf_hf_weights_map(skeleton, processor)
    writer = ShardWriter(folder)
    for tensor in reader.tensors:
        weights = dequantize(tensor.data, tensor.tensor_type)
        res = processor.process(weights=weights, name=tensor.name, tensor_key_mapping=mapping,
                                parsed_parameters=parsed)
        if res.name in mapping:
            writer.add(mapping[res.name], torch.from_numpy(np.copy(res.weights)).to(dtype))
        del weights, res
    writer.close()
    return sum(len(f) for f in writer.files)
