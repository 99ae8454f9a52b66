"""Lazy loading (model/lazy.py): blocks on the meta device until used, one block resident while a
stage works, the rewritten block spilled to disk; results bit-identical to loading the model whole.
The GGUF cache folder written tensor by tensor (model/gguf_dequant.py) equals transformers' own
whole-model GGUF loading."""
from __future__ import annotations

import copy
import json

import pytest
import torch
import transformers as T
from safetensors.torch import load_file, save_file

from slimformer.compress import run_stages
from slimformer.engine import run_sequential
from slimformer.data.calibration import calibration_set
from slimformer.errors import CorruptModelError, ModelNotFoundError, RecipeError, SlimformerError
from slimformer.model import get_module, load
from slimformer.model.save import save
from slimformer.recipe import parse_recipe

CAL = {"samples": 4, "seq_len": 32}
LAZY_FAMILIES = ("llama", "gpt2", "bert")  # GQA decoder; Conv1D weights + tied head; encoder


def _out(model, ids):
    with torch.no_grad():
        out = model.module(input_ids=ids)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def _meta_blocks(model) -> int:
    return sum(any(p.device.type == "meta" for p in get_module(model.module, b.name).parameters())
               for b in model.arch.blocks)


def _real_rest(model) -> int:
    """Tensors outside the blocks (embeddings, final norm, head) that are resident."""
    return sum(t.device.type != "meta" for n, t in model.module.state_dict(keep_vars=True).items()
               if not model.lazy._in_block(n))


@pytest.mark.parametrize("family", LAZY_FAMILIES)
def test_lazy_forward_streams_blocks_and_equals_eager(tiny, tiny_dir, family):
    lazy = load(tiny_dir[family], lazy=True)
    assert _meta_blocks(lazy) == len(lazy.arch.blocks)  # nothing of the blocks read at load
    assert _real_rest(lazy) == 0  # nor the embeddings and head: they stream with the whole forward
    ids = torch.randint(4, 300, (2, 20), generator=torch.Generator().manual_seed(0))
    assert torch.equal(_out(lazy, ids), _out(tiny[family], ids))
    assert _meta_blocks(lazy) == len(lazy.arch.blocks) and not lazy.lazy.resident  # dropped again
    assert _real_rest(lazy) == 0 and lazy.head_is_tied == tiny[family].head_is_tied


@pytest.mark.parametrize("family", LAZY_FAMILIES)
@pytest.mark.parametrize("stage", [{"quantize": {"method": "gptq", "bits": 4, "group_size": 32}},
                                   {"quantize": {"method": "rtn", "bits": 8, "activations": "dynamic"}},
                                   {"quantize": {"method": "rtn", "bits": 8, "lm_head": True}},
                                   {"quantize": {"method": "rtn", "bits": 8, "activations": "static"}},
                                   {"prune": {"method": "sparsegpt", "sparsity": 0.5}}])
def test_lazy_stage_saves_the_same_tensors_as_eager(tiny, tiny_dir, family, stage, tmp_path):
    recipe = parse_recipe({"calibration": CAL, "stages": [stage]})
    eager, _ = run_stages(tiny[family], recipe, progress=False)
    lazy_src = load(tiny_dir[family], lazy=True)
    lazy, logs = run_stages(lazy_src, recipe, progress=False)
    assert logs[0].memory == "one block at a time"
    assert _meta_blocks(lazy) == len(lazy.arch.blocks)  # every rewritten block went to its spill file
    assert _meta_blocks(lazy_src) == len(lazy_src.arch.blocks)  # the original still reads its source
    save(eager, tmp_path / "eager")
    save(lazy, tmp_path / "lazy")
    index = json.loads((tmp_path / "lazy" / "slimformer.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == len(lazy.arch.blocks) + 1  # one shard per block
    a, b = load(tmp_path / "eager").module.state_dict(), load(tmp_path / "lazy").module.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def _kernel_caches(model) -> list[str]:
    """Modules still holding a packed kernel or an input group's stacked layer (own copies of codes)."""
    return [n for n, m in model.module.named_modules()
            if getattr(m, "_cache", None) or getattr(getattr(m, "_group", None), "_fused", None) is not None]


@pytest.mark.parametrize("stage", [{"quantize": {"method": "gptq", "bits": 4, "group_size": 32, "lm_head": True}},
                                   {"quantize": {"method": "rtn", "bits": 8, "activations": "dynamic"}}])
def test_streamed_quantized_blocks_leave_no_kernel_behind(tiny, tiny_dir, stage):
    """A packed kernel holds its own copy of a block's codes: one kept after the block is released
    makes a lazily loaded model's memory grow with its depth (the stage's propagation and every
    evaluation run each quantized block through its kernels)."""
    recipe = parse_recipe({"calibration": CAL, "stages": [stage]})
    lazy, _ = run_stages(load(tiny_dir["llama"], lazy=True), recipe, progress=False)
    assert not _kernel_caches(lazy)  # the stage's propagation built them, the commit dropped them
    eager, _ = run_stages(tiny["llama"], recipe, progress=False)
    ids = torch.randint(4, 300, (2, 20), generator=torch.Generator().manual_seed(0))
    assert torch.equal(_out(lazy, ids), _out(eager, ids))
    assert _kernel_caches(eager)  # the check can see them: an eager model keeps its kernels
    assert not _kernel_caches(lazy) and not lazy.lazy.resident


def test_engine_holds_one_block_at_a_time(tiny_dir):
    model = load(tiny_dir["llama"], lazy=True)
    calib = calibration_set(model, **CAL)
    seen = []

    def rewrite(m, blk, stats):
        seen.append((sorted(m.lazy.resident), len(m.arch.blocks) - _meta_blocks(m)))
        return {}

    run_sequential(model, calib, rewrite, {"hessian"}, progress=False, rewrites=False)
    assert seen == [([b.name], 1) for b in model.arch.blocks]
    assert not model.lazy.spilled  # a measuring pass writes nothing


def test_a_stage_that_needs_the_whole_model_loads_it_and_says_so(tiny, tiny_dir):
    recipe = parse_recipe({"calibration": CAL, "stages": [{"trim": {"ffn": 0.25}}]})
    lazy, logs = run_stages(load(tiny_dir["llama"], lazy=True), recipe, progress=False)
    eager, _ = run_stages(tiny["llama"], recipe, progress=False)
    assert logs[0].memory.startswith("whole model") and lazy.lazy is None
    ids = torch.randint(4, 300, (1, 16), generator=torch.Generator().manual_seed(1))
    assert torch.equal(_out(lazy, ids), _out(eager, ids))


def test_lazy_dense_save_is_a_sharded_hf_folder(tiny, tiny_dir, tmp_path):
    save(load(tiny_dir["gpt2"], lazy=True), tmp_path / "out")
    assert (tmp_path / "out" / "model.safetensors.index.json").is_file()
    back = T.AutoModelForCausalLM.from_pretrained(tmp_path / "out")  # plain transformers, Conv1D layout
    ids = torch.randint(4, 300, (1, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.allclose(back(input_ids=ids).logits, _out(tiny["gpt2"], ids), atol=1e-5)


def test_lazy_bad_input_is_one_line(tiny_dir, tmp_path):
    folder = tmp_path / "nan"
    folder.mkdir()
    for f in tiny_dir["llama"].iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    state = load_file(str(folder / "model.safetensors"))
    state["model.layers.1.mlp.down_proj.weight"][0, 0] = float("nan")
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    model = load(folder, lazy=True)  # blocks are read when used, so the NaN shows then
    with pytest.raises(CorruptModelError, match="down_proj.weight holds NaN"):
        _out(model, torch.tensor([[5, 6, 7]]))
    (folder / "model.safetensors").rename(folder / "weights.bin")
    with pytest.raises(ModelNotFoundError, match="lazy loading reads safetensors"):
        load(folder, lazy=True)
    with pytest.raises(RecipeError, match="calibration dtype 'fp8' unknown"):
        parse_recipe({"calibration": {"dtype": "fp8"}, "stages": []})
    with pytest.raises(RecipeError, match="calibration device 'gpu' unknown; use auto, cpu, cuda"):
        parse_recipe({"calibration": {"device": "gpu"}, "stages": []})


def test_engine_device_auto_is_the_cpu_without_cuda_and_cuda_is_refused(tiny):
    """`device: auto` (the default) resolves to CUDA only where torch sees one; asking for CUDA on a
    machine without it is the one-line configuration error, before any block runs."""
    from slimformer.errors import ConfigValueError
    model = tiny["llama"]
    auto = calibration_set(model, **CAL).device
    assert auto == ("cuda" if torch.cuda.is_available() else "cpu")
    assert calibration_set(model, **CAL, device="cpu").device == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ConfigValueError, match="calibration device cuda: torch sees no CUDA device"):
            calibration_set(model, **CAL, device="cuda")


def test_bfloat16_calibration_runs_blocks_in_bf16_and_keeps_fp32_statistics(tiny):
    hessians = {}
    for dtype in ("float32", "bfloat16"):
        model = copy.deepcopy(tiny["llama"])
        calib = calibration_set(model, **CAL, dtype=dtype)
        got = hessians[dtype] = {}

        def rewrite(m, blk, stats, got=got):
            got[blk.index] = {n: stats[n].xtx.clone() for n in blk.linears if stats.get(n) is not None}
            return {}
        run_sequential(model, calib, rewrite, {"hessian"}, progress=False)
    a, b = hessians["float32"], hessians["bfloat16"]
    q0, o0 = (n for n in tiny["llama"].arch.blocks[0].linears if n.endswith(("q_proj", "o_proj")))
    assert a[0][q0].dtype == b[0][q0].dtype == torch.float64  # accumulated in fp64 either way
    assert torch.equal(a[0][q0], b[0][q0])  # block 0's q/k/v read the fp32 embeddings through a norm
    # o_proj reads attention computed from bf16 q/k/v products: close to fp32, not equal
    assert not torch.equal(a[0][o0], b[0][o0])
    rel = ((a[0][o0] - b[0][o0]).norm() / a[0][o0].norm()).item()
    assert rel < 0.05, rel


def test_bfloat16_calibration_changes_gptq_codes_only_slightly(tiny):
    recipe = lambda dt: parse_recipe({"calibration": {**CAL, "dtype": dt},  # noqa: E731
                                      "stages": [{"quantize": {"method": "gptq", "bits": 4, "group_size": 32}}]})
    a, _ = run_stages(tiny["llama"], recipe("float32"), progress=False)
    b, logs = run_stages(tiny["llama"], recipe("bfloat16"), progress=False)
    assert logs[0].calibration["dtype"] == "bfloat16"
    name = tiny["llama"].arch.blocks[1].linears[0]
    qa, qb = get_module(a.module, name).codes(), get_module(b.module, name).codes()
    differ = (qa != qb).float().mean().item()
    assert 0 < differ < 0.2  # block 1 saw bf16-computed inputs: some codes move, most do not


@pytest.mark.parametrize("family", ["llama", "gemma3", "phi3"])
def test_gguf_dequantized_tensor_by_tensor_equals_transformers(tiny, tiny_dir, family, tmp_path, monkeypatch):
    monkeypatch.setenv("SLIMFORMER_CACHE", str(tmp_path / "cache"))
    from slimformer.export import export
    from slimformer.model.load import gguf_cache_folder
    if family == "llama":
        model = tiny["llama"]
    else:
        from test_gguf_families import _build, _configs
        tok = T.AutoTokenizer.from_pretrained(tiny_dir["llama"])
        model = _build(family, _configs()[family], tok, tmp_path / family)
    export(model, "gguf", tmp_path / "m.gguf", dtype="q8_0")
    folder = gguf_cache_folder(tmp_path / "m.gguf")
    assert (folder / "model.safetensors.index.json").is_file()
    ours = T.AutoModelForCausalLM.from_pretrained(folder).state_dict()
    ref = T.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf", dtype=torch.float32).state_dict()
    assert ours.keys() == ref.keys()
    assert all(torch.equal(ours[k], ref[k]) for k in ref)
