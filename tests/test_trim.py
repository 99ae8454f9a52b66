"""Trimming: every criterion against an independent computation of its score, the surgery against
the equivalent zeroing of the removed weights, and the saved folders against plain transformers."""
import copy
import json

import pytest
import torch
import transformers as T

from slimformer import compress, load, save
from slimformer.data.calibration import calibration_set
from slimformer.errors import ConfigValueError, RecipeError
from slimformer.model import get_module
from slimformer.recipe import parse_recipe
from slimformer.trim import TrimConfig, svd_factors, trim_model
from slimformer.trim import scores as S
from slimformer.trim.layers import block_influence, choose_by_loss
from slimformer.trim.objective import calibration_loss, targets
from slimformer.trim.reconstruct import mean_into_bias, refit
from slimformer.trim.surgery import drop_blocks, refresh, trim_ffn, trim_heads
from slimformer.trim.taylor import taylor_scores

from conftest import ENCODERS, FAMILIES

CAL = {"samples": 6, "seq_len": 48}


def _out(model, ids):
    with torch.no_grad():
        o = model.module(input_ids=ids)
    return o.logits if model.is_causal else o.last_hidden_state


def _ids(seed=0):
    return torch.randint(3, 300, (2, 16), generator=torch.Generator().manual_seed(seed))


def _inputs_of(model, name, batches):
    """Every (unpadded) input row of linear `name` on a plain forward: the independent reference."""
    rows, mask = [], {}

    def hook(mod, args, out):
        x = args[0]
        rows.append(x[mask["m"]] if mask["m"] is not None else x.reshape(-1, x.shape[-1]))

    h = get_module(model.module, name).register_forward_hook(hook)
    with torch.no_grad():
        for b in batches:
            m = b.get("attention_mask")
            mask["m"] = m.bool() if m is not None and not m.all() else None
            model.module(**b)
    h.remove()
    return torch.cat(rows).double()


def _stats(model, calib, want):
    from slimformer.engine import run_sequential
    stats = {}
    run_sequential(model, calib, lambda m, b, s: stats.update(s) or {}, want, progress=False)
    return stats


# ---------------------------------------------------------------- scores vs direct computations

@pytest.mark.parametrize("family", ["llama", "bert", "gpt2"])
def test_activation_and_fluctuation_scores_match_direct_computation(tiny, family):
    model = tiny[family]
    calib = calibration_set(model, **CAL)
    stats = _stats(model, calib, {"norms", "mean"})
    blk = model.arch.blocks[1]
    for reader, scorer, groups in [(blk.ffn.down, S.ffn_scores, 1), (blk.attn.o, S.head_scores, blk.attn.head_dim)]:
        X = _inputs_of(model, reader, calib.batches)
        W = get_module(model.module, reader).weight.data.double()
        wanda = X.norm(dim=0) * W.norm(dim=0)
        flap = X.var(dim=0, unbiased=False) * W.pow(2).sum(0)
        got_a = scorer(model, blk, "activation", stats).double()
        got_f = scorer(model, blk, "fluctuation", stats).double()
        torch.testing.assert_close(got_a, wanda.view(-1, groups).sum(1), rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(got_f, flap.view(-1, groups).sum(1), rtol=2e-3, atol=1e-6)


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_hidden_channel_scores_match_direct_computation(tiny, family):
    model = tiny[family]
    calib = calibration_set(model, **CAL)
    stats = _stats(model, calib, {"norms", "mean"})
    wanda, flap = 0, 0
    for blk in model.arch.blocks:
        for group in S.hidden_readers(blk):
            X = _inputs_of(model, group[0], calib.batches)
            W = torch.cat([get_module(model.module, n).weight.data for n in group]).double()
            wanda = wanda + X.norm(dim=0) * W.norm(dim=0)
            flap = flap + X.var(dim=0, unbiased=False) * W.pow(2).sum(0)
    torch.testing.assert_close(S.hidden_scores(model, "activation", stats).double(), wanda, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(S.hidden_scores(model, "fluctuation", stats).double(), flap, rtol=2e-3, atol=1e-6)
    emb = get_module(model.module, model.arch.embeddings[0]).weight.data
    mag = S.hidden_scores(model, "magnitude")
    assert bool((mag.pow(2) >= emb.pow(2).sum(0) - 1e-4).all())  # the embedding column is part of the group


def test_magnitude_scores_are_group_norms(tiny):
    model = tiny["llama"]
    blk = model.arch.blocks[0]
    w = lambda n: get_module(model.module, n).weight.data
    j = 5
    expect = torch.cat([w(blk.ffn.gate)[j], w(blk.ffn.up)[j], w(blk.ffn.down)[:, j]]).norm()
    assert S.ffn_scores(model, blk, "magnitude")[j].item() == pytest.approx(expect.item(), rel=1e-5)
    a, h = blk.attn, 3
    rows = slice(h * a.head_dim, (h + 1) * a.head_dim)
    expect = torch.cat([w(a.q)[rows].reshape(-1), w(a.o)[:, rows].reshape(-1)]).norm()  # GQA: k/v shared
    assert S.head_scores(model, blk, "magnitude")[h].item() == pytest.approx(expect.item(), rel=1e-5)


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_taylor_scores_equal_gradients_of_explicit_gates(tiny, family):
    """d loss / d g for a gate g multiplying each neuron / head output, squared per batch, summed."""
    model = copy.deepcopy(tiny[family])
    calib = calibration_set(model, **CAL)
    batches = calib.batches[:3]
    tg = targets(model, tiny[family], batches)
    got = taylor_scores(model, batches, tg)
    for blk in model.arch.blocks:
        a = blk.attn
        ffn_ref, head_ref = 0, 0
        for b, t in zip(batches, tg):
            g_ffn = torch.ones(blk.ffn.width, requires_grad=True)
            g_head = torch.ones(a.n_heads, requires_grad=True)
            h1 = get_module(model.module, blk.ffn.down).register_forward_pre_hook(lambda m, args: (args[0] * g_ffn,))
            h2 = get_module(model.module, a.o).register_forward_pre_hook(
                lambda m, args: (args[0] * g_head.repeat_interleave(a.head_dim),))
            loss = calibration_loss(model, b, t)
            gf, gh = torch.autograd.grad(loss, [g_ffn, g_head])
            h1.remove(), h2.remove()
            ffn_ref, head_ref = ffn_ref + gf.pow(2), head_ref + gh.pow(2)
        torch.testing.assert_close(got[("ffn", blk.index)], ffn_ref, rtol=1e-3, atol=1e-10)
        torch.testing.assert_close(got[("heads", blk.index)], head_ref, rtol=1e-3, atol=1e-10)


def test_taylor_hidden_score_is_the_directional_derivative(tiny):
    """sum over channel c's weights of grad * w = d/d eps loss((1 + eps) * weights on c) at 0."""
    model = copy.deepcopy(tiny["llama"])
    batch = calibration_set(model, **CAL).batches[:1]
    got = taylor_scores(model, batch, [None], hidden=True)["hidden"]
    c, eps = 7, 1e-3

    def loss_scaled(e):
        m = copy.deepcopy(model)
        m.module.double()  # a float32 central difference is too coarse at this step
        arch = m.arch
        with torch.no_grad():
            get_module(m.module, arch.embeddings[0]).weight[:, c] *= 1 + e
            for n in [arch.final_norm] + [x for b in arch.blocks for x in (b.attn_norm, b.ffn_norm)]:
                get_module(m.module, n).weight[c] *= 1 + e
            for b in arch.blocks:
                for n in b.attn.inputs + [b.ffn.gate, b.ffn.up]:
                    get_module(m.module, n).weight[:, c] *= 1 + e
                for n in (b.attn.o, b.ffn.down):
                    get_module(m.module, n).weight[c] *= 1 + e
            if not arch.tied_head:
                get_module(m.module, arch.head).weight[:, c] *= 1 + e
        with torch.no_grad():
            return float(calibration_loss(m, batch[0], None).double())

    derivative = (loss_scaled(eps) - loss_scaled(-eps)) / (2 * eps)
    assert got[c].item() == pytest.approx(derivative ** 2, rel=1e-3)


def test_block_influence_is_one_minus_cosine_of_block_input_and_output(tiny):
    model = tiny["bert"]
    calib = calibration_set(model, **CAL)
    got = block_influence(model, calib.batches)
    cos_sum, n = torch.zeros(model.arch.n_layers, dtype=torch.float64), 0
    with torch.no_grad():
        for b in calib.batches:
            hs = model.module(**b, output_hidden_states=True).hidden_states  # BERT: no final norm
            m = b["attention_mask"].bool()
            for i in range(model.arch.n_layers):
                cos_sum[i] += torch.nn.functional.cosine_similarity(hs[i][m], hs[i + 1][m], dim=-1).double().sum()
            n += int(m.sum())
    torch.testing.assert_close(got.double(), 1 - cos_sum / n, rtol=1e-4, atol=1e-6)


def test_loss_choice_drops_the_block_whose_removal_costs_least(tiny):
    model = tiny["llama"]
    batches = calibration_set(model, **CAL).batches[:3]
    dropped, rounds = choose_by_loss(model, 1, batches, [None] * 3, torch.zeros(model.arch.n_layers), progress=False)
    direct = []
    for i in range(model.arch.n_layers):
        m = copy.deepcopy(model)
        drop_blocks(m, [i])
        refresh(m)
        with torch.no_grad():
            direct.append(sum(float(calibration_loss(m, b, None)) for b in batches) / 3)
    assert dropped == [min(range(len(direct)), key=direct.__getitem__)]
    for k, v in rounds[0]["measured"].items():
        assert v == pytest.approx(direct[int(k)], rel=1e-4)


def test_activation_aware_svd_reaches_the_eckart_young_bound_on_the_inputs():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(20, 30, generator=g, dtype=torch.float64)
    X = torch.randn(400, 30, generator=g, dtype=torch.float64) @ torch.randn(30, 30, generator=g, dtype=torch.float64)
    bound = torch.linalg.svdvals(W @ X.T)[5:].pow(2).sum()  # best rank-5 approximation of W X^T
    B, A = svd_factors(W, 5, X.T @ X, damp=1e-10)
    assert ((W - B @ A) @ X.T).pow(2).sum().item() == pytest.approx(bound.item(), rel=1e-6)
    B2, A2 = svd_factors(W, 5)
    assert (W - B2 @ A2).pow(2).sum().item() == pytest.approx(torch.linalg.svdvals(W)[5:].pow(2).sum().item(), rel=1e-6)
    assert ((W - B2 @ A2) @ X.T).pow(2).sum() > bound


# ---------------------------------------------------------------- surgery is exact

@pytest.mark.parametrize("family", FAMILIES)
def test_cutting_heads_and_neurons_equals_zeroing_their_output_weights(tiny, family):
    model = copy.deepcopy(tiny[family])
    zeroed = copy.deepcopy(tiny[family])
    for blk in model.arch.blocks:
        a = blk.attn
        per = a.n_heads // a.n_kv_heads
        keep_heads = [g * per for g in range(a.n_kv_heads)] if per > 1 else [0, 2]  # one per group / two
        keep_ffn = list(range(0, blk.ffn.width, 3))
        with torch.no_grad():
            o = get_module(zeroed.module, a.o).weight
            for h in set(range(a.n_heads)) - set(keep_heads):
                o[:, h * a.head_dim:(h + 1) * a.head_dim] = 0
            d = get_module(zeroed.module, blk.ffn.down).weight
            d[:, sorted(set(range(blk.ffn.width)) - set(keep_ffn))] = 0
        trim_heads(model, blk, keep_heads)
        trim_ffn(model, blk, keep_ffn)
    refresh(model)
    ids = _ids()
    torch.testing.assert_close(_out(model, ids), _out(zeroed, ids), rtol=1e-4, atol=1e-5)
    width = tiny[family].arch.blocks[0].ffn.width
    assert get_module(model.module, model.arch.blocks[0].ffn.up).out_features == len(range(0, width, 3))


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_cutting_head_dimensions_equals_zeroing_their_query_and_value_rows(tiny, family):
    from slimformer.trim.surgery import trim_head_dims
    model, zeroed = copy.deepcopy(tiny[family]), copy.deepcopy(tiny[family])
    for blk in model.arch.blocks:
        a = blk.attn
        keep = torch.stack([torch.arange(0, a.head_dim, 2) + (h % 2) for h in range(a.n_heads)])  # 8 of 16
        gone = [h * a.head_dim + d for h in range(a.n_heads) for d in range(a.head_dim) if d not in keep[h]]
        with torch.no_grad():
            if a.fused:
                W = get_module(zeroed.module, a.qkv)
                width = a.n_heads * a.head_dim
                for rows in (torch.tensor(gone), 2 * width + torch.tensor(gone)):
                    W.weight[rows] = 0
                    W.bias[rows] = 0
            else:
                for name in (a.q, a.v):
                    get_module(zeroed.module, name).weight[gone] = 0
                    get_module(zeroed.module, name).bias[gone] = 0
        trim_head_dims(model, blk, keep, keep)
    refresh(model)
    ids = _ids()
    torch.testing.assert_close(_out(model, ids), _out(zeroed, ids), rtol=1e-4, atol=1e-5)


def test_gqa_heads_are_removed_evenly_within_groups_or_as_whole_groups(tiny):
    model = copy.deepcopy(tiny["llama"])  # 4 query heads, 2 KV heads
    log = trim_model(model, TrimConfig(heads=0.5, score="magnitude", compensate="none"), None, progress=False)
    assert [(b.attn.n_heads, b.attn.n_kv_heads) for b in model.arch.blocks] == [(2, 2), (2, 2)]
    assert log.standard
    model = copy.deepcopy(tiny["llama"])
    trim_model(model, TrimConfig(kv_heads=1, score="magnitude", compensate="none"), None, progress=False)
    assert [(b.attn.n_heads, b.attn.n_kv_heads) for b in model.arch.blocks] == [(2, 1), (2, 1)]
    with pytest.raises(ConfigValueError, match="same number of query heads"):
        trim_heads(copy.deepcopy(tiny["llama"]), tiny["llama"].arch.blocks[0], [0, 1, 2])


def test_dropping_blocks_equals_skipping_them(tiny):
    from slimformer.trim.layers import skipped
    model = copy.deepcopy(tiny["llama"])
    ids = _ids()
    with skipped(model, [0]):
        expect = _out(model, ids)
    drop_blocks(model, [0])
    refresh(model)
    torch.testing.assert_close(_out(model, ids), expect)
    assert model.module.config.num_hidden_layers == 1
    assert get_module(model.module, model.arch.blocks[0].attn.module).layer_idx == 0


def test_bias_compensation_replaces_removed_neurons_by_their_mean(tiny):
    model = tiny["bert"]
    calib = calibration_set(model, **CAL)
    stats = _stats(model, calib, {"norms", "mean"})
    down = get_module(model.module, model.arch.blocks[0].ffn.down)
    removed = torch.arange(10)
    X = _inputs_of(model, model.arch.blocks[0].ffn.down, calib.batches)
    expect = down.bias.data + down.weight.data[:, removed] @ X[:, removed].mean(0).float()
    got = mean_into_bias(down.weight.data, down.bias.data, stats[model.arch.blocks[0].ffn.down].mean, removed)
    torch.testing.assert_close(got, expect, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", ["bert", "llama"])  # with a bias, and without
def test_reconstruction_is_the_least_squares_refit_of_the_original_output(tiny, family):
    model = tiny[family]
    calib = calibration_set(model, **CAL)
    blk = model.arch.blocks[0]
    stats = _stats(model, calib, {"hessian", "mean"})
    down = get_module(model.module, blk.ffn.down)
    X = _inputs_of(model, blk.ffn.down, calib.batches)
    b = down.bias.data.double() if down.bias is not None else None
    Y = X @ down.weight.data.double().T + (b if b is not None else 0)
    keep = torch.arange(0, blk.ffn.width, 2)
    A = X[:, keep] if b is None else torch.cat([X[:, keep], torch.ones(len(X), 1, dtype=X.dtype)], 1)
    sol = torch.linalg.lstsq(A, Y).solution.T  # [out, |keep| (+1)]
    st = stats[blk.ffn.down]
    W, b_new = refit(down.weight.data, down.bias.data if b is not None else None, st.xtx, st.sum, st.n, keep,
                     damp=1e-9)
    torch.testing.assert_close(W.double(), sol[:, :len(keep)], rtol=1e-3, atol=1e-4)
    if b is not None:
        torch.testing.assert_close(b_new.double(), sol[:, -1], rtol=1e-3, atol=1e-4)
    err = lambda W_, b_: (X[:, keep] @ W_.double().T + (b_.double() if b_ is not None else 0) - Y).pow(2).sum()
    sliced = err(down.weight.data[:, keep], down.bias.data if b is not None else None)
    assert err(W, b_new) < sliced  # the refit is never worse than slicing alone


def test_trim_keeps_pruning_masks_in_step(tiny):
    from slimformer.prune import PruneConfig, prune_model
    model = copy.deepcopy(tiny["llama"])
    prune_model(model, PruneConfig(method="magnitude", sparsity=0.5), progress=False)
    trim_model(model, TrimConfig(ffn=0.25, layers=1, score="magnitude", compensate="none",
                                 layer_score="block_influence"), CAL, progress=False)
    assert type(model.masks).__name__ == "MaskStore" and len(model.masks) == len(model.arch.linears)
    for name, keep in model.masks.items():
        W = get_module(model.module, name).weight
        assert keep.shape == W.shape and bool((W[~keep] == 0).all())


# ---------------------------------------------------------------- saved folders

@pytest.mark.parametrize("family,cfg", [
    ("llama", dict(heads=0.5, kv_heads=0, ffn=0.25, layers=1, hidden=0.25)),
    ("llama", dict(kv_heads=1, ffn=0.5)),
    ("qwen2", dict(layers=1, ffn=0.5, heads=0.5)),
    ("bert", dict(ffn=0.5, layers=1)),
    ("distilbert", dict(ffn=0.25)),
    ("gpt2", dict(ffn=0.5, layers=1)),
    ("bert", dict(hidden=0.25)),  # heads shrink with the hidden size: head_dim = hidden / heads holds
    ("gpt2", dict(hidden=0.25, ffn=0.25)),
])
def test_uniform_trims_load_in_plain_transformers_with_identical_outputs(tiny, tmp_path, family, cfg):
    model = copy.deepcopy(tiny[family])
    log = trim_model(model, TrimConfig(score="activation", **cfg), CAL, progress=False)
    assert log.standard and log.uniform, log.nonstandard
    save(model, tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").is_file()
    cls = T.AutoModel if family in ENCODERS else T.AutoModelForCausalLM
    plain = cls.from_pretrained(tmp_path / "m").eval()
    ids = _ids()
    with torch.no_grad():
        o = plain(input_ids=ids)
    torch.testing.assert_close(o.last_hidden_state if family in ENCODERS else o.logits, _out(model, ids))


@pytest.mark.parametrize("family,cfg", [
    ("bert", dict(heads=0.5, ffn=0.5)),  # attention narrower than hidden: no standard config
    ("gpt2", dict(heads=1, allocation="global")),  # different head counts per block
    ("llama", dict(ffn=0.3, allocation="global", score="taylor")),
    ("llama", dict(lowrank={r"mlp\.(up|gate)_proj": 0.25})),
])
def test_nonstandard_trims_reload_through_slimformer_bit_identically(tiny, tmp_path, family, cfg):
    model = copy.deepcopy(tiny[family])
    log = trim_model(model, TrimConfig(**cfg), CAL, original=tiny[family], progress=False)
    save(model, tmp_path / "m")
    back = load(tmp_path / "m")
    ids = _ids()
    assert torch.equal(_out(back, ids), _out(model, ids))
    assert not log.standard and log.nonstandard  # every case here is one a config cannot describe
    assert not (tmp_path / "m" / "model.safetensors").exists()  # plain transformers refuses it
    assert json.loads((tmp_path / "m" / "slimformer.json").read_text())["trim"]["family"] == family
    assert [(b.attn.n_heads, b.ffn.width) for b in back.arch.blocks] == \
        [(b.attn.n_heads, b.ffn.width) for b in model.arch.blocks]


def test_lowrank_replaces_only_linears_where_it_saves_time(tiny):
    from slimformer.trim import LowRankLinear
    model = copy.deepcopy(tiny["llama"])
    log = trim_model(model, TrimConfig(lowrank={r"mlp\.up_proj": 0.25, r"self_attn\.q_proj": 0.9},
                                       lowrank_method="svd", compensate="none", score="magnitude"),
                     None, progress=False)
    blk = model.arch.blocks[0]
    assert isinstance(get_module(model.module, blk.ffn.up), LowRankLinear)
    assert not isinstance(get_module(model.module, blk.attn.q), LowRankLinear)
    assert "would not save time" in log.lowrank_skipped[blk.attn.q]


def test_params_target_solves_for_the_kept_fraction(tiny):
    model = copy.deepcopy(tiny["bert"])
    log = trim_model(model, TrimConfig(params=0.8, score="magnitude"), None, progress=False)
    assert log.params_ratio <= 0.8 + 0.02 and log.params_ratio > 0.7


# ---------------------------------------------------------------- recipe and errors

@pytest.mark.parametrize("opts,match", [
    ({"heads": 1.5}, "fraction in"),
    ({"ffn": -0.1}, "fraction in"),
    ({"score": "entropy"}, "scores: magnitude"),
    ({"layer_score": "random", "layers": 1}, "block_influence or loss"),
    ({}, "removes nothing"),
    ({"params": 1.2}, "fraction of parameters kept"),
    ({"params": 0.5, "ffn": 0.5}, "drop heads"),
    ({"lowrank": {"(": 0.5}}, "invalid"),
])
def test_recipe_errors_name_what_fits(opts, match):
    with pytest.raises(RecipeError, match=match):
        parse_recipe({"stages": [{"trim": opts}]})


def test_amounts_out_of_reach_are_one_line_errors(tiny):
    with pytest.raises(ConfigValueError, match="at least 1 must stay"):
        trim_model(copy.deepcopy(tiny["llama"]), TrimConfig(layers=2, score="magnitude"), CAL, progress=False)
    with pytest.raises(ConfigValueError, match="at least 1 must stay"):
        trim_model(copy.deepcopy(tiny["bert"]), TrimConfig(heads=4, score="magnitude"), None, progress=False)


def test_trim_after_quantize_says_to_reorder(tiny):
    from slimformer.quant import QuantizeConfig, quantize_model
    model = copy.deepcopy(tiny["llama"])
    quantize_model(model, QuantizeConfig(method="rtn", bits=8), progress=False)
    with pytest.raises(ConfigValueError, match="put trim before prune"):
        trim_model(model, TrimConfig(ffn=0.5, score="magnitude", compensate="none"), None, progress=False)


def test_compress_with_trim_writes_a_standard_folder_and_reports_speed(tiny, tmp_path):
    recipe = {"calibration": CAL, "stages": [{"trim": {"ffn": 0.5, "layers": 1}}],
              "evaluate": {"max_windows": 2, "seq_len": 64},
              "bench": {"repeats": 1, "warmup": 0, "batch_sizes": [1], "seq_lens": [16], "throughput_items": 2,
                        "throughput_seq_len": 32, "throughput_passes": 1, "decode_new_tokens": 4,
                        "decode_prompt": 4, "decode_repeats": 1}}
    out = compress(tiny["llama"], recipe, out=tmp_path / "run", progress=False)
    assert out.stages[0].standard and out.speed["ratios"]["params"] < 0.8
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()
    recipe["stages"] = [{"trim": {"heads": 0.5}}]
    out = compress(tiny["bert"], recipe, out=tmp_path / "run2", progress=False)
    assert any("NON-STANDARD" in n for n in out.notes)


@pytest.mark.parametrize("name", ["trim-encoder-heads-ffn.yaml", "trim-drop-layers.yaml", "trim-gqa-ffn.yaml",
                                  "trim-w8a8-encoder.yaml"])
def test_bundled_trim_recipes_parse(name):
    from slimformer.recipe import default_recipe_path, load_recipe
    recipe = load_recipe(default_recipe_path().parent / name)
    assert recipe.stages[0].name == "trim" and recipe.stages[0].config.active


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_trimmed_then_quantized_models_reload_bit_identically(tiny, tmp_path, family):
    from slimformer.quant import QuantizeConfig, quantize_model
    model = copy.deepcopy(tiny[family])
    trim_model(model, TrimConfig(heads=0.5, ffn=0.5, layers=1), CAL, original=tiny[family], progress=False)
    quantize_model(model, QuantizeConfig(method="rtn", bits=8, activations="dynamic"), progress=False)
    save(model, tmp_path / "m")
    back = load(tmp_path / "m")
    ids = _ids()
    assert torch.equal(_out(back, ids), _out(model, ids))
