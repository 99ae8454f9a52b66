"""Every stage on today's decoder families: Qwen3 (per-head q/k norms), Gemma 3 (sandwich norms,
RMSNorm with offset 1, scaled embeddings, sliding and global layers; causal and as a
bidirectional encoder) and Phi-3 (fused GQA qkv_proj and gate_up_proj).

The references are computed here, independently of the code under test: a cut equals zeroing the
removed structure's reader columns on a copy; smoothing leaves the outputs unchanged; GPTQ codes
equal gptq() on the Hessian of inputs captured by hooks on the full model; Wanda's kept weights
are the top ones by |W| * ||x|| of those inputs. Norm weights are randomised (Gemma initialises
them to zero, the others to one), so a fold that ignores the norm's formula shows.
"""
from __future__ import annotations

import copy
import shutil

import pytest
import torch
import transformers as T

from slimformer.data.calibration import calibration_set
from slimformer.engine import run_sequential
from slimformer.errors import ConfigValueError
from slimformer.model import get_module, load
from slimformer.model.load import load_folder
from slimformer.model.save import save
from slimformer.model.shapes import config_mismatches, uniform
from slimformer.prune.stage import PruneConfig, prune_model
from slimformer.quant import QuantizeConfig, QuantLinear, quantize_model
from slimformer.quant.methods import gptq
from slimformer.quant.smoothing import SmoothingConfig, smooth_block
from slimformer.recover import RecoverConfig, recover
from slimformer.trim import TrimConfig, trim_model
from slimformer.trim.surgery import drop_blocks, refresh, trim_ffn, trim_head_dims, trim_heads, trim_hidden

from conftest import POSITIONS, VOCAB

CAL = {"samples": 4, "seq_len": 32}  # 32 tokens: longer than Gemma's test window of 8
FAMILIES = ("qwen3", "gemma3", "gemma3-bi", "phi3")
SHAPE = dict(vocab_size=VOCAB, pad_token_id=0, bos_token_id=1, eos_token_id=2, hidden_size=64,
             num_attention_heads=4, num_key_value_heads=2, intermediate_size=96,
             max_position_embeddings=POSITIONS)
GEMMA_LAYERS = ["sliding_attention", "full_attention", "sliding_attention"]


def _configs() -> dict:
    return {
        "qwen3": (T.Qwen3Config(**SHAPE, head_dim=16, num_hidden_layers=2), T.AutoModelForCausalLM),
        "gemma3": (T.Gemma3TextConfig(**SHAPE, head_dim=16, num_hidden_layers=3, sliding_window=8,
                                      layer_types=GEMMA_LAYERS), T.AutoModelForCausalLM),
        "gemma3-bi": (T.Gemma3TextConfig(**SHAPE, head_dim=16, num_hidden_layers=3, sliding_window=8,
                                         layer_types=GEMMA_LAYERS, use_bidirectional_attention=True),
                      T.AutoModel),
        "phi3": (T.Phi3Config(**SHAPE, num_hidden_layers=2), T.AutoModelForCausalLM),  # head_dim 64 / 4
    }


@pytest.fixture(scope="module")
def folders(tiny_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("decoders")
    out = {}
    for name, (cfg, cls) in _configs().items():
        torch.manual_seed(0)
        module = cls.from_config(cfg).eval()
        with torch.no_grad():
            for mname, mod in module.named_modules():
                if mname.endswith("norm") or mname.endswith("layernorm"):
                    mod.weight.add_(0.3 * torch.randn_like(mod.weight))
        folder = root / name
        module.save_pretrained(folder)
        for f in tiny_dir["llama"].iterdir():  # conftest's tiny BPE tokenizer
            if f.name.startswith(("tokenizer", "special_tokens")):
                shutil.copy(f, folder / f.name)
        out[name] = folder
    return out


@pytest.fixture(scope="module")
def fam(folders):
    """name -> loaded Model (shared: deepcopy before changing it)."""
    return {name: load(folder) for name, folder in folders.items()}


IDS = torch.randint(5, 300, (2, 24), generator=torch.Generator().manual_seed(1))


def _out(model, ids=IDS) -> torch.Tensor:
    with torch.no_grad():
        out = model.module(ids, **({"use_cache": False} if model.is_causal else {}))
    return out.logits if model.is_causal else out.last_hidden_state


def _zero_cols(model, name: str, cols) -> None:
    with torch.no_grad():
        get_module(model.module, name).weight[:, torch.as_tensor(cols)] = 0


def test_maps_read_the_facts(fam):
    g, p, q = fam["gemma3"].arch, fam["phi3"].arch, fam["qwen3"].arch
    assert g.norm.offset == 1.0 and g.embed_scale == pytest.approx(8.0) and g.tied_head
    assert [b.attention_type for b in g.blocks] == GEMMA_LAYERS and g.blocks[0].post_ffn_norm
    assert fam["gemma3-bi"].arch.bidirectional and not fam["gemma3-bi"].is_causal
    assert p.blocks[0].attn.fused and p.blocks[0].ffn.fused_gate_up and p.blocks[0].attn.n_kv_heads == 2
    assert q.blocks[0].attn.q_norm and q.norm.offset == 0.0


# ---- trim: a cut equals zeroing what it removes ---------------------------------------------------

# (query heads kept in block 0): one head out of each KV group; a whole KV group (k / v rows move)
HEAD_CUTS = [[0, 3], [2, 3]]


@pytest.mark.parametrize("family", FAMILIES)
def test_cutting_heads_equals_zeroing_their_o_columns(fam, family):
    """Block 0 alone loses heads (block 1 keeps all: a per-block trim, as Phi-3's shared-config
    head count must allow)."""
    for keep in HEAD_CUTS:
        model, ref = copy.deepcopy(fam[family]), copy.deepcopy(fam[family])
        blk = model.arch.blocks[0]
        gone = [h for h in range(blk.attn.n_heads) if h not in keep]
        _zero_cols(ref, blk.attn.o, torch.cat([torch.arange(h * 16, (h + 1) * 16) for h in gone]))
        trim_heads(model, blk, keep)
        refresh(model)
        a = model.arch.blocks[0].attn
        assert (a.n_heads, a.n_kv_heads) == (2, 2 if keep == [0, 3] else 1)
        assert model.arch.blocks[1].attn.n_heads == 4 and not uniform(model)
        assert torch.allclose(_out(model), _out(ref), atol=1e-5), (keep, (_out(model) - _out(ref)).abs().max())


@pytest.mark.parametrize("family", FAMILIES)
def test_cutting_ffn_neurons_equals_zeroing_their_down_columns(fam, family):
    model, ref = copy.deepcopy(fam[family]), copy.deepcopy(fam[family])
    blk = model.arch.blocks[1]
    gone = [1, 5, 40, 95]
    _zero_cols(ref, blk.ffn.down, gone)
    trim_ffn(model, blk, [i for i in range(96) if i not in gone])
    refresh(model)
    assert model.arch.blocks[1].ffn.width == 92
    assert torch.allclose(_out(model), _out(ref), atol=1e-5)


def _skip_block(model, index: int):
    """A hook making block `index` return its input (the reference for dropping it)."""
    def passthrough(module, args, kwargs, out):
        x = args[0] if args else kwargs["hidden_states"]
        return (x,) + tuple(out[1:]) if isinstance(out, tuple) else x
    return get_module(model.module, model.arch.blocks[index].name).register_forward_hook(passthrough, with_kwargs=True)


@pytest.mark.parametrize("family", ["gemma3", "gemma3-bi"])
def test_dropping_the_global_block_keeps_the_sliding_ones_sliding(fam, family, tmp_path):
    """Block 1 is Gemma's global layer: after dropping it, the old block 2 (sliding) must still get
    the sliding mask and local rotary base (layer_types sliced), also after a save and reload."""
    model, ref = copy.deepcopy(fam[family]), fam[family]
    drop_blocks(model, [1])
    refresh(model)
    assert [b.attention_type for b in model.arch.blocks] == ["sliding_attention"] * 2
    handle = _skip_block(ref, 1)
    try:
        want = _out(ref)
    finally:
        handle.remove()
    assert torch.allclose(_out(model), want, atol=1e-5)
    assert config_mismatches(model) == []
    back = load_folder(save(model, tmp_path / "dropped"))
    assert torch.equal(_out(back), _out(model))


@pytest.mark.parametrize("family", FAMILIES)
def test_uniform_trim_gives_a_standard_config_and_reloads_bit_identical(fam, family, tmp_path):
    model = copy.deepcopy(fam[family])
    log = trim_model(model, TrimConfig(score="magnitude", heads=1, ffn=0.25, compensate="none"), progress=False)
    assert log.standard and config_mismatches(model) == []
    assert [(b.attn.n_heads, b.attn.n_kv_heads, b.ffn.width) for b in model.arch.blocks] == \
        [(2, 2, 72)] * model.arch.n_layers
    folder = save(model, tmp_path / "trimmed")
    cls = T.AutoModelForCausalLM if model.is_causal else T.AutoModel
    plain = cls.from_pretrained(folder).eval()  # transformers alone reads the trimmed folder
    with torch.no_grad():
        out = plain(IDS)
    assert torch.equal(out.logits if model.is_causal else out.last_hidden_state, _out(model))
    assert torch.equal(_out(load_folder(folder)), _out(model))


@pytest.mark.parametrize("family", ["phi3", "qwen3"])
def test_per_block_trim_reloads_through_the_shape_map(fam, family, tmp_path):
    """Different head counts per block: no config describes that (config_mismatches names the
    tensors), so the folder carries a shape map and slimformer rebuilds the modules at load."""
    model = copy.deepcopy(fam[family])
    trim_heads(model, model.arch.blocks[0], [2, 3])
    refresh(model)
    assert config_mismatches(model)
    back = load_folder(save(model, tmp_path / "per-block"))
    assert [b.attn.n_kv_heads for b in back.arch.blocks] == [1, 2]
    assert torch.equal(_out(back), _out(model))


@pytest.mark.parametrize("family", FAMILIES)
def test_hidden_trim_keeps_the_embedding_scale_exact_and_reloads(fam, family, tmp_path):
    """Hidden channels cut by index. Gemma's embedding scale sqrt(hidden) follows config.hidden_size
    at every load: the reference here is the original's sliced tensors with the ORIGINAL scale
    (what the cut must compute), and the reloaded folder must compute the same."""
    orig = fam[family]
    model = copy.deepcopy(orig)
    keep = [c for c in range(64) if c % 8 != 3]  # 56 channels
    trim_hidden(model, keep)
    refresh(model)
    assert model.arch.hidden_size == 56 and model.arch.blocks[0].attn.head_dim == 16
    emb = model.arch.embeddings[0]
    with torch.no_grad():
        want_emb = get_module(orig.module, emb)(IDS)[..., keep]
        assert torch.allclose(get_module(model.module, emb)(IDS), want_emb, rtol=1e-6, atol=1e-6)
    ref = copy.deepcopy(model)  # the sliced original, unscaled: weights, scale and final norm as they were
    with torch.no_grad():
        e = get_module(ref.module, emb)
        e.weight.copy_(get_module(orig.module, emb).weight[:, keep])
        if torch.is_tensor(getattr(e, "embed_scale", None)):
            e.embed_scale.fill_(orig.arch.embed_scale)
        n = get_module(ref.module, ref.arch.final_norm)
        n.weight.copy_(get_module(orig.module, orig.arch.final_norm).weight[keep])
    assert torch.allclose(_out(model), _out(ref), rtol=1e-5, atol=1e-5)
    assert config_mismatches(model) == []
    back = load_folder(save(model, tmp_path / "narrow"))
    assert torch.equal(_out(back), _out(model))


@pytest.mark.parametrize("family", FAMILIES)
def test_head_dim_cuts_are_refused_under_qk_norms_and_gqa(fam, family):
    model = copy.deepcopy(fam[family])
    blk = model.arch.blocks[0]
    keep = torch.arange(12).repeat(blk.attn.n_heads, 1)
    with pytest.raises(ConfigValueError, match="head dimensions"):
        trim_head_dims(model, blk, keep, keep)


# ---- smoothing: an exact transform, folded where each family allows it -----------------------------

def _fold_targets(family: str, blk) -> set:
    """Where this test expects each group's scale (written from the family, not from fold_target)."""
    a, f = blk.attn, blk.ffn
    want = {("norm", blk.attn_norm), ("norm", blk.ffn_norm)}
    want.add(("rows", f.up, 96 if family == "phi3" else 0))  # down's scale: the up half of [gate; up]
    return want  # GQA everywhere: o's scale cannot fold into v (shared by two query heads)


@pytest.mark.parametrize("method", ["smoothquant", "awq"])
@pytest.mark.parametrize("family", FAMILIES)
def test_smoothing_alone_keeps_the_outputs(fam, family, method):
    """Every block smoothed, one member of the q/k/v group left out of quantization where there
    is one (it must be compensated too); outputs unchanged while norms and rows did change."""
    model0 = fam[family]
    model = copy.deepcopy(model0)
    cfg = QuantizeConfig(method="rtn" if method == "smoothquant" else "awq", bits=4, group_size=32,
                         smoothquant=0.5 if method == "smoothquant" else None)
    applied = []

    def rewrite(m, blk, stats):
        chosen = {n for n in blk.linears if not n.endswith(".k_proj")}
        applied.extend((blk, g) for g in smooth_block(m, blk, stats, cfg.smoothing, chosen, cfg.spec))
        return {}

    run_sequential(model, calibration_set(model, **CAL), rewrite, cfg.smoothing.wants(), progress=False)
    for blk in model0.arch.blocks:
        got = {g.target for b, g in applied if b.index == blk.index}
        assert got == _fold_targets(family, blk), got
    moved = [g for _, g in applied if not torch.allclose(g.s, torch.ones_like(g.s))]
    assert moved and {g.target[0] for g in moved} == {"norm", "rows"}
    assert torch.allclose(_out(model), _out(model0), rtol=1e-4, atol=1e-4), (_out(model) - _out(model0)).abs().max()
    if family == "phi3":  # the gate half of gate_up_proj is untouched by down's scale
        up = model0.arch.blocks[0].ffn.up
        gate_rows = lambda m: get_module(m.module, up).weight[:96]  # noqa: E731
        ratio = gate_rows(model0) / gate_rows(model)
        assert torch.allclose(ratio, ratio[:1].expand_as(ratio), rtol=1e-5)  # only the norm's column scale


def _captured(model, name: str, calib) -> torch.Tensor:
    """Every non-padding input row `name` receives when the whole model runs on the batches."""
    rows = []
    handle = get_module(model.module, name).register_forward_pre_hook(lambda m, a: rows.append(a[0].detach()))
    try:
        with torch.no_grad():
            for b in calib.batches:
                model.module(**b, **({"use_cache": False} if model.is_causal else {}))
    finally:
        handle.remove()
    out = []
    for b, x in zip(calib.batches, rows):
        mask = b.get("attention_mask")
        out.append(x[mask.bool()] if mask is not None else x.reshape(-1, x.shape[-1]))
    return torch.cat(out).double()


# (family, smoothquant, layers kept dense, layer checked, where its scale s is read). A block's
# statistics are collected before any of its layers is quantized, so the layers of the checked
# one's block that feed it are kept dense: the captured inputs are then the ones GPTQ saw.
ATTN_OF = r"layers\.{}\.self_attn\.[qkvo]_proj$"
GPTQ_CASES = [
    ("phi3", 0.5, [], "model.layers.1.self_attn.qkv_proj", "norm:model.layers.1.input_layernorm"),
    ("phi3", 0.5, [r"qkv_proj$", r"o_proj$", r"gate_up_proj$"], "model.layers.1.mlp.down_proj",
     "rows:model.layers.1.mlp.gate_up_proj"),
    ("gemma3", 0.5, [], "model.layers.2.self_attn.q_proj", "norm:model.layers.2.input_layernorm"),
    # block 1 is global, block 0 sliding: o's input in block 1 needs block 1's own mask and rotary
    # tables in the engine, not block 0's
    ("gemma3", None, [ATTN_OF.format(1).replace("qkvo", "qkv")], "model.layers.1.self_attn.o_proj", "none"),
    ("gemma3-bi", None, [ATTN_OF.format(2)], "layers.2.mlp.gate_proj", "none"),
    # gate, not up: up's rows also carry down's scale
    ("qwen3", 0.5, [ATTN_OF.format(1)], "model.layers.1.mlp.gate_proj", "norm:model.layers.1.post_attention_layernorm"),
]


@pytest.mark.parametrize("family,alpha,ignore,layer,where", GPTQ_CASES)
def test_gptq_codes_are_gptq_on_the_inputs_the_layer_receives(fam, family, alpha, ignore, layer, where):
    model0 = fam[family]
    model = copy.deepcopy(model0)
    cfg = QuantizeConfig(method="gptq", bits=4, group_size=32, smoothquant=alpha, ignore=ignore, kernel="simulated")
    quantize_model(model, cfg, CAL, progress=False)
    qlin = get_module(model.module, layer)
    assert isinstance(qlin, QuantLinear)
    X = _captured(model, layer, calibration_set(model0, **CAL))
    W0 = get_module(model0.module, layer).weight.detach().double()
    kind, _, producer = where.partition(":")
    s = torch.ones(W0.shape[1], dtype=torch.float64)
    if kind == "norm":  # (offset + w) was divided by s
        off = model0.arch.norm.offset
        s = (off + get_module(model0.module, producer).weight.double()) / \
            (off + get_module(model.module, producer).weight.double())
    elif kind == "rows":  # the up half of gate_up's rows was divided by s (gate_up kept dense)
        w0, w1 = (get_module(m.module, producer).weight.double()[96:, 0] for m in (model0, model))
        s = w0 / w1
    if kind != "none":
        assert not torch.allclose(s, torch.ones_like(s))
    ref = gptq((W0 * s[None, :]).float(), ((2.0 / X.shape[0]) * X.T @ X).float(), cfg.spec, cfg.blocksize, cfg.damp)
    mismatch = (qlin.codes().to(torch.int16) != ref.q.to(torch.int16)).float().mean().item()
    assert mismatch < 0.005, f"{mismatch:.2%} of the codes differ from GPTQ on the captured inputs"
    assert torch.allclose(qlin.scales, ref.scales.float(), rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_rtn_weights_sit_on_the_grid_and_awq_w8a8_run(fam, family):
    model0 = fam[family]
    model = copy.deepcopy(model0)
    quantize_model(model, QuantizeConfig(method="rtn", bits=4, group_size=32, kernel="simulated"), progress=False)
    for name in model.arch.linears:
        q = get_module(model.module, name)
        W0 = get_module(model0.module, name).weight.detach()
        steps = (q.dequantized() / q.scales.repeat_interleave(32, 1)).double()
        assert torch.allclose(steps, steps.round(), atol=1e-4)  # integer multiples of the group scale
        assert (q.dequantized() - W0).abs().le(q.scales.repeat_interleave(32, 1) * 0.5 + 1e-6).all()
    ref = _out(model0)
    rel = lambda m: ((_out(m) - ref).norm() / ref.norm()).item()  # noqa: E731
    rtn_error = rel(model)
    # On random weights AWQ's scales buy little at the output (measured: within 15 % of RTN's
    # 0.16-0.28 here), but a scale applied on one side only would cost far more than that.
    for cfg, bound in ((QuantizeConfig(method="awq", bits=4, group_size=32), 1.3 * rtn_error),
                       (QuantizeConfig(bits=8, activations="static", smoothquant=0.5), 0.1)):
        m = copy.deepcopy(model0)
        quantize_model(m, cfg, CAL, progress=False)
        assert all(isinstance(get_module(m.module, n), QuantLinear) for n in m.arch.linears)
        assert rel(m) < bound, (cfg.method, rel(m), bound)


# ---- prune -------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_wanda_2of4_keeps_the_top_weights_by_the_fused_inputs(fam, family):
    """Wanda on every linear (fused ones read one input: one statistics object); the last block's
    q/k/v (or qkv) mask equals the top 2 of 4 by |W| * ||x|| of the inputs captured on the model."""
    model0 = fam[family]
    model = copy.deepcopy(model0)
    prune_model(model, PruneConfig(method="wanda", pattern="2:4"), CAL, progress=False)
    blk = model.arch.blocks[-1]
    X = _captured(model, blk.attn.inputs[0], calibration_set(model0, **CAL))
    norms = X.pow(2).sum(0).sqrt()
    for name in blk.attn.inputs:  # (the FFN's statistics predate this block's own pruning)
        W0 = get_module(model0.module, name).weight.detach().double()
        score = (W0.abs() * norms[None, :]).view(W0.shape[0], -1, 4)
        want = torch.zeros_like(score, dtype=torch.bool).scatter_(2, score.topk(2, dim=2).indices, True)
        assert torch.equal(model.masks[name], want.view_as(W0)), name
    for name in model.arch.linears:
        assert model.masks[name].float().mean().item() == 0.5


@pytest.mark.parametrize("family", ["phi3", "gemma3"])
def test_sparsegpt_and_magnitude_prune_every_linear(fam, family, tmp_path):
    for method in ("sparsegpt", "magnitude"):
        model = copy.deepcopy(fam[family])
        log = prune_model(model, PruneConfig(method=method, sparsity=0.5), CAL, progress=False)
        assert log.sparsity_of_block_linears == pytest.approx(0.5, abs=0.01)
        for name in model.arch.linears:
            w = get_module(model.module, name).weight
            assert (w[~model.masks[name]] == 0).all()
    back = load_folder(save(model, tmp_path / "sparse"))
    assert torch.equal(_out(back), _out(model))


# ---- recover, and a full chain saved and reloaded ---------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_trim_quantize_recover_save_reload(fam, family, tmp_path):
    """Per-block-narrow trim, int8 quantization, a short distillation (QAT keeps the grid), then a
    save and reload that computes bit-identically."""
    original = fam[family]
    model = copy.deepcopy(original)
    trim_heads(model, model.arch.blocks[0], [2, 3])
    trim_ffn(model, model.arch.blocks[-1], list(range(80)))
    refresh(model)
    quantize_model(model, QuantizeConfig(method="rtn", bits=8), progress=False)
    before = {n: get_module(model.module, n).codes().clone() for n in model.arch.linears}
    rc = dict(steps=4, batch_size=2, seq_len=32, holdout=2, lr=1e-2, eval_every=2, data=["wikitext2:validation"])
    if model.is_causal:
        rc["eval"] = "heldout"
    else:  # the bidirectional encoder: embedding losses, scored on held-out text's embeddings
        rc.update(eval="heldout", kl=0.0)
    log = recover(model, original, RecoverConfig(**rc), progress=False)
    assert log.steps == 4 and log.qat_layers == len(model.arch.linears)
    assert all(isinstance(get_module(model.module, n), QuantLinear) for n in model.arch.linears)
    assert any(not torch.equal(before[n], get_module(model.module, n).codes()) for n in before)  # it trained
    back = load_folder(save(model, tmp_path / "chain"))
    assert [b.attn.n_heads for b in back.arch.blocks][0] == 2 and back.arch.blocks[-1].ffn.width == 80
    assert torch.equal(_out(back), _out(model))


@pytest.mark.parametrize("family", FAMILIES)
def test_trim_stage_end_to_end(fam, family):
    """The whole stage (Taylor scores over every weight on a channel, sandwich norms included;
    least-squares refit of o / down; a block; hidden channels) leaves a standard, uniform model
    that still runs close to the original."""
    model = copy.deepcopy(fam[family])
    log = trim_model(model, TrimConfig(score="taylor", heads=1, ffn=0.25, layers=1, hidden=8, grad_samples=2),
                     CAL, original=fam[family], progress=False)
    assert log.standard and log.uniform and len(log.layers_dropped) == 1
    assert model.arch.hidden_size == 56 and model.arch.n_layers == fam[family].arch.n_layers - 1
    assert torch.isfinite(_out(model)).all()


def test_multi_head_fused_qkv_takes_o_scale_in_its_v_slice(tiny):
    """GPT-2's c_attn [q; k; v] (multi-head): o's scale folds into the v rows, the last third,
    and nothing else of c_attn's rows moves."""
    model0 = tiny["gpt2"]
    model = copy.deepcopy(model0)
    cfg = QuantizeConfig(method="rtn", bits=8, smoothquant=0.5)
    applied = []
    run_sequential(model, calibration_set(model, **CAL),
                   lambda m, blk, st: applied.extend(smooth_block(m, blk, st, cfg.smoothing, set(blk.linears), cfg.spec))
                   or {}, cfg.smoothing.wants(), progress=False)
    qkv = model0.arch.blocks[0].attn.qkv
    assert ("rows", qkv, 128) in {g.target for g in applied}
    assert torch.allclose(_out(model), _out(model0), rtol=1e-4, atol=1e-4)
    ratio = get_module(model0.module, qkv).weight.double() / get_module(model.module, qkv).weight.double()
    col = ratio[:, :1]  # per row: the o fold's 1 / s on v rows (times the norm's column scale, per column)
    qk = ratio[:128] / ratio[:1]
    assert torch.allclose(qk, torch.ones_like(qk), rtol=1e-5)  # q / k rows: only the column scale
    assert not torch.allclose(col[128:] / col[:1], torch.ones_like(col[128:]), rtol=1e-3)  # v rows: scaled
