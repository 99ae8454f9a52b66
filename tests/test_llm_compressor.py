"""A checkpoint quantized by llm-compressor itself (oneshot, saved compressed) loads with
slimformer.load onto QuantLinear layers with integer kernels, holds exactly the weights transformers
decompresses from it, and computes what transformers computes from it (weight-only: to the
kernels' rounding; W8A8: to within a quarter of what activation rounding itself changes)."""
from __future__ import annotations

import copy
import shutil

import llmcompressor  # noqa: F401  (the dev extra: missing, the module fails, never skips)
import pytest
import torch
import transformers as T
from llmcompressor import oneshot
from llmcompressor.modifiers.quantization import QuantizationModifier

from slimformer import load
from slimformer.model import get_module
from slimformer.nn import QuantLinear

IDS = torch.randint(5, 380, (2, 20), generator=torch.Generator().manual_seed(0))
W4_G32 = {"group_0": {"targets": ["Linear"], "weights": {"num_bits": 4, "type": "int", "symmetric": True,
                                                         "strategy": "group", "group_size": 32}}}
RECIPES = {  # tiny widths (64) are below the presets' groups of 128: W4A16 in groups of 32
    "W4A16 g32": dict(config_groups=W4_G32, ignore=["lm_head"]),
    "W8A16": dict(config_groups={"group_0": {"targets": ["Linear"], "weights": {
        "num_bits": 8, "type": "int", "symmetric": True, "strategy": "channel"}}}, ignore=["lm_head"]),
    "W8A8": dict(targets="Linear", scheme="W8A8", ignore=["lm_head"]),  # dynamic int8 per token
}


def _logits(module):
    with torch.no_grad():
        return module(input_ids=IDS).logits


@pytest.mark.parametrize("name", list(RECIPES))
def test_llm_compressor_checkpoint_runs_on_slimformers_kernels(tiny, tiny_dir, tmp_path, name):
    src = T.AutoModelForCausalLM.from_pretrained(tiny_dir["llama"]).eval()
    oneshot(model=src, recipe=QuantizationModifier(**RECIPES[name]))
    out = tmp_path / "llmc"
    src.save_pretrained(out, save_compressed=True)
    for f in tiny_dir["llama"].glob("tokenizer*"):
        shutil.copy(f, out / f.name)
    ours = load(out)
    hf = T.AutoModelForCausalLM.from_pretrained(out).eval()  # transformers' own reading (decompressed)
    want = _logits(hf)  # the first forward decompresses
    for lin in ours.arch.linears:
        q = get_module(ours.module, lin)
        assert isinstance(q, QuantLinear) and q.kernel != "simulated"  # an integer kernel runs it
        assert torch.equal(q.dequantized(), get_module(hf, lin).weight.detach())  # the file's codes exactly
    got = _logits(ours.module)
    assert not torch.equal(want, _logits(tiny["llama"].module))  # the quantization did change the outputs
    if name != "W8A8":  # weight-only: bf16 activations in the int4 / int8 kernels, fp32 in transformers
        assert (got - want).abs().max() < 2e-2 * want.abs().max()
        return
    # llm-compressor's W8A8 rounds activations per token on a symmetric grid (255 levels over
    # [-absmax, absmax]); slimformer's per-token kernels use an asymmetric one (256 levels over
    # [min, max], never coarser). The same weight codes, so against the same codes with float
    # activations slimformer's outputs are no further off than transformers' reading (measured
    # here: mean 6.41e-4 vs 6.55e-4; 10 % slack for other CPUs' kernel paths).
    floats = copy.deepcopy(ours)
    for lin in floats.arch.linears:
        q = get_module(floats.module, lin)
        q.unlink()
        q.act, q.kernel, q._cache = "none", "simulated", {}
    exact = _logits(floats.module)
    assert (got - exact).abs().mean() <= 1.1 * (want - exact).abs().mean()
    assert (got - want).abs().max() < 2 * (want - exact).abs().max()  # both within activation rounding
