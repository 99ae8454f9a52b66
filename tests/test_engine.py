"""The sequential calibration engine: statistics equal those of a plain forward pass, padding is
excluded, and the Hessian preparation survives degenerate input."""
import copy

import pytest
import torch

from slimformer.data.calibration import calibration_set
from slimformer.engine import run_sequential
from slimformer.engine.sequential import _share_repeats, capture_block_inputs
from slimformer.engine.hessian import inverse_cholesky
from slimformer.engine.stats import LinearStats, gram
from slimformer.heap import release_free_heap
from slimformer.model import get_module


def _reference_inputs(model, calib, name):
    """Inputs of linear `name` in a plain forward of the whole (unchanged) model."""
    seen = []
    h = get_module(model.module, name).register_forward_hook(lambda m, a, o: seen.append(a[0].detach()))
    with torch.no_grad():
        for b in calib.batches:
            model.module(**b)
    h.remove()
    return seen


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert", "distilbert"])
def test_stats_match_a_plain_forward(tiny, family):
    model = copy.deepcopy(tiny[family])
    calib = calibration_set(model, samples=6, seq_len=48)
    collected = {}

    def keep(model, blk, stats):
        collected.update({n: (s.norms.clone(), s.hessian().clone(), s.n) for n, s in stats.items()})
        return {}

    run_sequential(model, calib, keep, {"norms", "hessian"}, progress=False)
    last = model.arch.blocks[-1]
    for name in (last.attn.o, last.ffn.down, last.attn.inputs[0]):
        xs = _reference_inputs(model, calib, name)
        rows = []
        for x, b in zip(xs, calib.batches):
            mask = b.get("attention_mask")
            rows.append(x[mask.bool()] if mask is not None else x.reshape(-1, x.shape[-1]))
        X = torch.cat(rows).double()
        norms, H, n = collected[name]
        assert n == X.shape[0] == calib.tokens
        torch.testing.assert_close(norms.double(), X.pow(2).sum(0).sqrt(), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(H.double(), 2 * X.T @ X / n, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("d,chunk", [(300, 64), (1000, 128), (129, 64), (40, 128)])
def test_gram_equals_the_full_product(d, chunk):
    """The block-triangular x^T x (upper blocks computed, lower mirrored) is the full product,
    including a last partial block and inputs too narrow to split."""
    x = torch.randn(517, d, generator=torch.Generator().manual_seed(d))
    G = gram(x, chunk)
    torch.testing.assert_close(G.double(), x.double().T @ x.double(), rtol=1e-5, atol=1e-3)


def test_qkv_share_one_statistics_object(tiny):
    model = copy.deepcopy(tiny["llama"])
    calib = calibration_set(model, samples=2, seq_len=16)
    seen = []
    run_sequential(model, calib, lambda m, blk, stats: seen.append(stats) or {}, {"norms"}, progress=False)
    a = model.arch.blocks[0].attn
    assert seen[0][a.q] is seen[0][a.k] is seen[0][a.v]


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_calibration_pass_stops_after_the_last_requested_input(tiny, family):
    """The FFN down projection's input completes every statistic, so in the calibration pass the
    projection itself never runs: it runs once per batch, in the propagation pass (and not at
    all in the last block, which nothing reads). Asking only for q/k/v stops before o too."""
    model = copy.deepcopy(tiny[family])
    calib = calibration_set(model, samples=3, seq_len=16)
    k = len(calib.batches)  # forward calls per pass
    first, last = model.arch.blocks[0], model.arch.blocks[-1]
    calls = {n: 0 for n in (first.ffn.down, first.attn.o, last.ffn.down)}
    for n in calls:
        get_module(model.module, n).register_forward_hook(lambda m, a, o, n=n: calls.__setitem__(n, calls[n] + 1))
    run_sequential(model, calib, lambda m, b, s: {}, {"norms"}, progress=False)
    assert calls == {first.ffn.down: k, first.attn.o: 2 * k, last.ffn.down: 0}
    calls.update({n: 0 for n in calls})
    run_sequential(model, calib, lambda m, b, s: {}, {"norms"}, select=lambda b: list(b.attn.inputs),
                   progress=False)
    assert calls == {first.ffn.down: k, first.attn.o: k, last.ffn.down: 0}


def test_rewritten_block_feeds_the_next(tiny):
    """Zeroing block 0's output projection must change what block 1 sees."""
    model = copy.deepcopy(tiny["llama"])
    calib = calibration_set(model, samples=2, seq_len=16)
    norms = []

    def rewrite(model, blk, stats):
        norms.append(stats[blk.attn.q].norms.clone())
        if blk.index == 0:
            get_module(model.module, blk.attn.o).weight.data.zero_()
            get_module(model.module, blk.ffn.down).weight.data.zero_()
        return {}

    run_sequential(model, calib, rewrite, {"norms"}, progress=False)
    # Block 1's input is now block 0's input (both residual branches zeroed): same norms up to
    # the RMSNorm weights, which are ones at initialisation.
    torch.testing.assert_close(norms[1], norms[0], rtol=1e-4, atol=1e-4)


def test_hessian_dead_channels_and_retries():
    torch.manual_seed(0)
    X = torch.randn(5, 8)  # 5 tokens, 8 channels: rank-deficient
    X[:, 3] = 0  # a dead channel
    H = 2 * X.T @ X / 5
    W = torch.randn(4, 8)
    U, info = inverse_cholesky(H, W, damp=1e-12)
    assert info.dead_channels == 1 and bool((W[:, 3] == 0).all())
    assert torch.isfinite(U).all()
    H_neg = -torch.eye(8)  # not positive definite at all: retries, then a clear error
    with pytest.raises(FloatingPointError, match="positive definite"):
        inverse_cholesky(H_neg, torch.randn(2, 8), damp=0.01, max_retries=2)


def test_calibration_defaults_seed_and_hash(tiny):
    lm, enc = tiny["llama"], tiny["bert"]
    a = calibration_set(lm, samples=3, seq_len=32, seed=1)
    b = calibration_set(lm, samples=3, seq_len=32, seed=1)
    c = calibration_set(lm, samples=3, seq_len=32, seed=2)
    assert a.sha256 == b.sha256 != c.sha256
    assert a.data == "wikitext2" and a.split == "validation" and a.tokens == 96
    assert all(x["input_ids"].shape == (1, 32) for x in a.batches)
    e = calibration_set(enc, samples=40, seq_len=64)
    assert e.data == "stsb" and e.split == "train" and e.samples == 40 and len(e.batches) == 2
    assert e.tokens == sum(int(x["attention_mask"].sum()) for x in e.batches)


def test_calibration_never_uses_test_split(tiny):
    from slimformer.errors import DataError
    with pytest.raises(DataError, match="test split"):
        calibration_set(tiny["llama"], split="test")


def test_retried_dampening_is_what_the_factor_inverts():
    """After retries, U^T U is the inverse of H + rel * mean(diag H) * I for the reported rel,
    whether H is copied or (float64, overwrite=True) damped in place."""
    torch.manual_seed(1)
    X = torch.randn(3, 6, dtype=torch.float64)
    H = X.T @ X - 0.05 * torch.eye(6, dtype=torch.float64)  # indefinite: the first tries fail
    for overwrite in (False, True):
        U, info = inverse_cholesky(H.clone(), torch.randn(2, 6), damp=1e-4, overwrite=overwrite)
        assert info.retries > 0
        damped = H + info.damp * H.diagonal().mean() * torch.eye(6, dtype=torch.float64)
        torch.testing.assert_close((U.double().T @ U.double()) @ damped, torch.eye(6, dtype=torch.float64),
                                   rtol=0, atol=1e-4)
    H64 = H.clone()
    inverse_cholesky(H64, torch.randn(2, 6), damp=1e-4, overwrite=False)
    assert torch.equal(H64, H)  # not overwritten unless asked


def test_failed_second_factorization_recovers_the_overwritten_hessian(monkeypatch):
    """With overwrite=True H's buffer holds H^-1 once the first factorization succeeds; if the
    factorization of H^-1 then fails, the damped H is recovered from it and damped further."""
    torch.manual_seed(2)
    X = torch.randn(40, 6, dtype=torch.float64)
    H = X.T @ X / 40
    real = torch.linalg.cholesky_ex
    calls = {"upper": 0}

    def flaky(A, upper=False, **kw):
        L, info = real(A, upper=upper, **kw)
        if upper:
            calls["upper"] += 1
            if calls["upper"] == 1:  # the first factor of H^-1 "fails"
                return L, torch.ones_like(info)
        return L, info

    monkeypatch.setattr(torch.linalg, "cholesky_ex", flaky)
    for overwrite in (True, False):
        calls["upper"] = 0
        buf = H.clone()
        U, info = inverse_cholesky(buf, torch.randn(2, 6), damp=0.01, overwrite=overwrite)
        assert info.retries == 1 and info.damp == pytest.approx(0.1)
        damped = H + 0.1 * H.diagonal().mean() * torch.eye(6, dtype=torch.float64)
        torch.testing.assert_close((U.double().T @ U.double()) @ damped, torch.eye(6, dtype=torch.float64),
                                   rtol=0, atol=1e-5)


def test_released_hessian_is_the_same_values_without_a_copy():
    stats = LinearStats(frozenset({"hessian"}))
    for _ in range(3):
        stats.update(torch.randn(7, 5))
    fresh = stats.hessian(torch.float64)
    buffer = stats.xtx.data_ptr()
    taken = stats.hessian(torch.float64, release=True)
    assert torch.equal(taken, fresh) and taken.data_ptr() == buffer and stats.xtx is None


def test_captured_samples_share_identical_side_inputs(tiny):
    """Rotary tables and the like, equal for every window, are held once; hidden states are not
    shared, and a side input that differs between windows stays per window."""
    model = copy.deepcopy(tiny["llama"])
    calib = calibration_set(model, samples=4, seq_len=16)
    samples = capture_block_inputs(model, calib)
    assert len(samples) == len(calib.batches) > 1
    cos = [s.kwargs["position_embeddings"][0] for s in samples]
    assert all(c is cos[0] for c in cos)
    hidden = [s.args[0] if s.args else s.kwargs["hidden_states"] for s in samples]
    assert len({id(h) for h in hidden}) == len(hidden)
    prev = (torch.arange(4.0), torch.zeros(3), torch.ones(2))
    now = (torch.arange(4.0), torch.ones(3), torch.ones(2, dtype=torch.float64))
    shared = _share_repeats(now, prev)
    assert shared[0] is prev[0] and shared[1] is now[1] and shared[2] is now[2]  # value, dtype differ


def test_release_free_heap_runs_on_glibc():
    import platform
    ran = release_free_heap()
    assert ran or platform.libc_ver()[0] != "glibc"
