"""Pruning methods against independent references written here from the papers' definitions,
and the prune stage end to end on tiny models of every family."""
import copy
import json

import pytest
import torch
import transformers as T

from slimformer import compress, load, save
from slimformer.data.calibration import calibration_set
from slimformer.engine.stats import LinearStats
from slimformer.errors import RecipeError
from slimformer.model import get_module
from slimformer.model.masks import MaskStore, pack_bits, unpack_bits
from slimformer.prune import (PruneConfig, magnitude_mask, nm_mask, outlier_ratio, owl_sparsities,
                              prune_model, sparsegpt, wanda_mask)
from slimformer.recipe import parse_recipe

CAL = {"samples": 6, "seq_len": 48}


def test_wanda_mask_is_a_per_row_ranking_of_w_times_norm():
    torch.manual_seed(0)
    W, norms = torch.randn(6, 20), torch.rand(20) * 3
    keep = wanda_mask(W, norms, 0.4)
    for r in range(6):
        score = [abs(W[r, j].item()) * norms[j].item() for j in range(20)]
        pruned = sorted(range(20), key=lambda j: score[j])[:8]  # 0.4 * 20
        assert sorted(torch.where(~keep[r])[0].tolist()) == sorted(pruned)


def test_magnitude_mask_is_layer_wide():
    W = torch.tensor([[0.1, 5.0, 4.0, 3.0], [0.2, 0.3, 6.0, 7.0]])
    keep = magnitude_mask(W, 0.5)
    assert keep.tolist() == [[False, True, True, False], [False, False, True, True]]  # 0.1 0.2 0.3 3.0 go


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 4)])
def test_nm_mask_keeps_the_n_largest_of_every_m(n, m):
    torch.manual_seed(1)
    score = torch.rand(5, 4 * m)
    keep = nm_mask(score, n, m)
    for r in range(5):
        for g in range(4):
            grp = score[r, g * m:(g + 1) * m]
            top = set(torch.topk(grp, n).indices.tolist())
            assert set(torch.where(keep[r, g * m:(g + 1) * m])[0].tolist()) == top


def _layer_problem(rows=12, cols=32, tokens=400, seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(cols, cols, generator=g) * 0.3 + torch.eye(cols)  # correlated inputs
    X = torch.randn(tokens, cols, generator=g) @ mix
    W = torch.randn(rows, cols, generator=g)
    return W, X, 2 * X.T @ X / tokens


def _err(W, Wq, X):
    return ((W - Wq) @ X.T).pow(2).sum().item()


def _least_squares(W, X, keep):
    """Brute force: for each row, the best weights on its kept inputs (min ||X w - X_kept w'||)."""
    out = torch.zeros_like(W)
    for r in range(W.shape[0]):
        idx = torch.where(keep[r])[0]
        sol = torch.linalg.lstsq(X[:, idx].double(), (X @ W[r]).double()[:, None]).solution[:, 0]
        out[r, idx] = sol.float()
    return out


@pytest.mark.parametrize("pattern", [None, (2, 4)])
def test_sparsegpt_reconstruction_near_the_least_squares_optimum(pattern):
    W, X, H = _layer_problem()
    Wq, keep, info = sparsegpt(W, H, 0.5, pattern, blocksize=8, damp=1e-6)
    assert bool((Wq[~keep] == 0).all()) and abs(1 - keep.float().mean().item() - 0.5) < 1e-6
    err = _err(W, Wq, X)
    err_ls = _err(W, _least_squares(W, X, keep), X)  # the optimum for SparseGPT's own mask
    err_mask_only = _err(W, W * keep, X)  # same mask, no OBS update
    err_magnitude = _err(W, W * (nm_mask(W.abs(), *pattern) if pattern else magnitude_mask(W, 0.5)), X)
    assert err_ls <= err * (1 + 1e-4)  # nothing beats least squares on the same mask
    assert err < 0.7 * err_mask_only and err < 0.8 * err_magnitude  # the OBS updates pay off


def test_sparsegpt_is_exact_when_pruned_columns_precede_kept_ones():
    """Errors only flow right; if every pruned weight lies left of every kept one, each kept
    weight is updated for all pruned ones before it is fixed: the least-squares optimum."""
    W, X, H = _layer_problem()
    W[:, :16] *= 1e-3  # the least salient half, so the adaptive mask prunes exactly these columns
    Wq, keep, _ = sparsegpt(W, H, 0.5, None, blocksize=32, damp=1e-9)
    assert not keep[:, :16].any() and keep[:, 16:].all()
    torch.testing.assert_close(Wq, _least_squares(W, X, keep), rtol=1e-3, atol=1e-3)


def test_sparsegpt_single_weight_equals_the_obs_formula():
    """Pruning one weight: OBS gives dW = -(w_q / [H^-1]_qq) H^-1[q, :] (Hassibi & Stork)."""
    W, X, H = _layer_problem(rows=1, cols=10)
    W[0, 0] = 1e-3  # the least salient weight, so the adaptive mask picks it
    Wq, keep, _ = sparsegpt(W, H, 0.1, None, blocksize=10, damp=1e-9)
    assert torch.where(~keep[0])[0].tolist() == [0]
    Hinv = torch.linalg.inv(H.double())
    expected = W.double() - (W[0, 0].double() / Hinv[0, 0]) * Hinv[0][None, :]
    torch.testing.assert_close(Wq.double(), expected, rtol=1e-4, atol=1e-6)


def test_owl_allocation_and_outlier_ratio():
    s = owl_sparsities([0.01, 0.05, 0.02, 0.10], target=0.7, lam=0.08)
    assert sum(s) / 4 == pytest.approx(0.7)
    assert s[3] == min(s) and s[0] == max(s)  # most outliers -> keeps most weights
    assert max(s) - min(s) == pytest.approx(0.16)
    W, n = torch.tensor([[1.0, 1.0, 1.0, 100.0]]), torch.ones(4)
    # mean score 25.75; only 100 exceeds 2 x mean
    assert outlier_ratio([W], [n], threshold=2.0) == pytest.approx(0.25)


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert"])
@pytest.mark.parametrize("method,pattern", [("magnitude", "unstructured"), ("wanda", "2:4"),
                                            ("sparsegpt", "unstructured"), ("sparsegpt", "4:8")])
def test_prune_stage_every_family(tiny, family, method, pattern):
    model = copy.deepcopy(tiny[family])
    log = prune_model(model, PruneConfig(method=method, pattern=pattern, sparsity=0.5), CAL, progress=False)
    assert log.sparsity_of_block_linears == pytest.approx(0.5, abs=1e-3)
    assert set(log.per_layer) == set(model.arch.linears) == set(model.masks)
    for name, keep in model.masks.items():
        W = get_module(model.module, name).weight
        assert bool((W[~keep] == 0).all())
        if pattern != "unstructured":
            n, m = map(int, pattern.split(":"))
            assert bool((keep.view(keep.shape[0], -1, m).sum(-1) == n).all())
    emb = get_module(model.module, model.arch.embeddings[0]).weight
    assert torch.equal(emb, get_module(tiny[family].module, model.arch.embeddings[0]).weight)


def test_wanda_stage_uses_block0_dense_inputs(tiny):
    """Block 0 sees the dense model's inputs, so its mask equals Wanda computed from a plain forward."""
    model = copy.deepcopy(tiny["llama"])
    calib = calibration_set(model, **CAL)
    q = model.arch.blocks[0].attn.q
    xs = []
    h = get_module(model.module, q).register_forward_hook(lambda m, a, o: xs.append(a[0]))
    with torch.no_grad():
        for b in calib.batches:
            model.module(**b)
    h.remove()
    norms = torch.cat([x.reshape(-1, x.shape[-1]) for x in xs]).pow(2).sum(0).sqrt()
    expected = wanda_mask(get_module(model.module, q).weight, norms, 0.5)
    prune_model(model, PruneConfig(method="wanda"), CAL, progress=False)
    assert torch.equal(model.masks[q], expected)


def test_sparsegpt_stage_equals_the_pure_function_on_block0(tiny):
    """The stage hands its Hessian buffers over (released statistics, H overwritten by its
    inverse, U-only solve); the result is bit for bit sparsegpt() on the same statistics."""
    model = copy.deepcopy(tiny["llama"])
    calib = calibration_set(model, **CAL)
    blk = model.arch.blocks[0]
    stats = {}
    hooks = []
    for group in blk.input_groups:
        shared = LinearStats(frozenset({"hessian"}))
        stats.update({n: shared for n in group})
        hooks.append(get_module(model.module, group[0]).register_forward_pre_hook(
            lambda m, a, st=shared: st.update(a[0])))
    with torch.no_grad():
        for b in calib.batches:
            model.module(**b)
    for h in hooks:
        h.remove()
    expected = {n: sparsegpt(get_module(model.module, n).weight, stats[n].hessian(torch.float64), 0.5)
                for n in blk.linears}
    prune_model(model, PruneConfig(method="sparsegpt"), CAL, progress=False)
    for name, (W, keep, _) in expected.items():
        assert torch.equal(model.masks[name], keep), name
        assert torch.equal(get_module(model.module, name).weight, W), name


def test_owl_stage_reaches_the_same_total(tiny):
    model = copy.deepcopy(tiny["llama"])
    log = prune_model(model, PruneConfig(method="wanda", sparsity=0.7, allocation="owl", owl_lambda=0.05,
                                         owl_threshold=2.0), CAL, progress=False)
    per_block = log.owl_block_sparsity
    assert len(per_block) == 2 and sum(per_block) / 2 == pytest.approx(0.7, abs=1e-4)
    assert log.sparsity_of_block_linears == pytest.approx(0.7, abs=0.01)  # whole weights per row of 64


def test_targets_and_ignore(tiny):
    model = copy.deepcopy(tiny["llama"])
    log = prune_model(model, PruneConfig(method="magnitude", sparsity=0.5, ignore=[r"\.k_proj$"],
                                         targets={r"mlp\.down_proj": 0.25}), None, progress=False)
    assert not any(n.endswith("k_proj") for n in log.per_layer)
    assert all(v == pytest.approx(0.25, abs=0.01) for n, v in log.per_layer.items() if "down_proj" in n)


def test_masks_survive_training_steps(tiny):
    model = copy.deepcopy(tiny["llama"])
    prune_model(model, PruneConfig(method="magnitude"), None, progress=False)
    with torch.no_grad():
        for p in model.module.parameters():
            p.add_(0.1)
    model.apply_masks()
    for name, keep in model.masks.items():
        assert bool((get_module(model.module, name).weight[~keep] == 0).all())


@pytest.mark.parametrize("shape", [(3, 5), (8, 16), (1, 1), (2, 3, 7)])
def test_mask_bits_follow_the_documented_order(shape):
    """Element k of the flattened mask is bit k % 8 of byte k // 8 (the layout sparse_io stores)."""
    keep = torch.rand(shape, generator=torch.Generator().manual_seed(0)) > 0.5
    packed = pack_bits(keep)
    flat = keep.reshape(-1).tolist()
    expected = [sum(1 << j for j in range(8) if 8 * i + j < len(flat) and flat[8 * i + j])
                for i in range((len(flat) + 7) // 8)]
    assert packed.dtype == torch.uint8 and packed.tolist() == expected
    assert torch.equal(unpack_bits(packed, shape), keep)


def test_pruned_model_holds_its_masks_one_bit_per_weight(tiny):
    model = copy.deepcopy(tiny["llama"])
    prune_model(model, PruneConfig(method="wanda", pattern="2:4"), CAL, progress=False)
    assert isinstance(model.masks, MaskStore)
    numels = [get_module(model.module, n).weight.numel() for n in model.masks]
    assert model.masks.nbytes() == sum((n + 7) // 8 for n in numels)
    name = next(iter(model.masks))
    keep = model.masks[name]
    assert keep.dtype == torch.bool and keep.shape == get_module(model.module, name).weight.shape
    with pytest.raises(TypeError, match="bool tensor"):
        model.masks[name] = keep.float()
    assert isinstance(copy.deepcopy(model).masks, MaskStore)


@pytest.mark.parametrize("family", ["llama", "gpt2", "distilbert"])
def test_compressed_storage_roundtrip_is_bit_identical_and_smaller(tiny, family, tmp_path):
    model = copy.deepcopy(tiny[family])
    dense_dir = save(model, tmp_path / "dense")
    prune_model(model, PruneConfig(method="wanda", pattern="2:4"), CAL, progress=False)
    save(model, tmp_path / "sparse")
    again = load(tmp_path / "sparse")
    a, b = model.module.state_dict(), again.module.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert again.masks.keys() == model.masks.keys()
    assert all(torch.equal(again.masks[k], model.masks[k]) for k in model.masks)
    x = torch.randint(5, 300, (1, 12))
    with torch.no_grad():
        torch.testing.assert_close(again.module(x)[0], model.module(x)[0], rtol=0, atol=0)
    from safetensors.torch import load_file
    stored = load_file(tmp_path / "sparse" / "slimformer.safetensors")
    for name in model.arch.linears:  # the documented layout, tensor by tensor
        numel = get_module(model.module, name).weight.numel()
        assert stored[f"{name}.weight.__bitmask"].numel() == (numel + 7) // 8
        assert stored[f"{name}.weight.__values"].numel() == numel // 2
    size = lambda d: sum(p.stat().st_size for p in d.glob("*.safetensors"))
    linear_bytes = sum(get_module(model.module, n).weight.numel() * 4 for n in model.arch.linears)
    assert size(dense_dir) - size(tmp_path / "sparse") > 0.4 * linear_bytes  # ideal: 0.48
    with pytest.raises(OSError):  # plain transformers refuses it rather than loading it wrongly
        T.AutoModel.from_pretrained(tmp_path / "sparse")
    meta = json.loads((tmp_path / "sparse" / "slimformer.json").read_text())
    assert meta["sparse"]["format"] == "bitmask-v1"


@pytest.mark.parametrize("opts,match", [
    ({"method": "obs"}, "methods: magnitude, wanda, sparsegpt"),
    ({"sparsity": 1.5}, r"in \[0, 1\)"),
    ({"pattern": "4:2"}, "N:M with 0 < N < M"),
    ({"allocation": "owl", "pattern": "2:4"}, "unstructured"),
    ({"ignore": ["("]}, "regex"),
    ({"sparsty": 0.5}, "unknown option 'sparsty'"),
])
def test_prune_recipe_errors(opts, match):
    with pytest.raises(RecipeError, match=match):
        parse_recipe({"stages": [{"prune": opts}]})


def test_prune_through_compress(tiny, tmp_path):
    out = tmp_path / "run"
    recipe = {"calibration": {"samples": 4, "seq_len": 32},
              "stages": [{"prune": {"method": "sparsegpt", "pattern": "2:4"}}],
              "evaluate": {"seq_len": 32, "max_windows": 2},
              "bench": {"batch_sizes": [1], "seq_lens": [16], "repeats": 1, "warmup": 0, "throughput_items": 2,
                        "throughput_seq_len": 32, "decode_new_tokens": 4, "decode_repeats": 1}}
    r = compress(tiny["llama"], recipe, out=out, progress=False)
    assert r.stages[0].calibration["sha256"] and r.stages[0].sparsity_of_block_linears == pytest.approx(0.5)
    assert r.speed["ratios"]["size"] < 0.9
    assert load(out / "model").masks
    assert "per_layer" in json.loads((out / "results.json").read_text())["stages"][0]
