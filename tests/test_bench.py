"""Bench produces every figure it promises; timings are never asserted, only their presence."""
import copy

import pytest

from slimformer.bench import BenchConfig, bench, compare
from slimformer.bench.size import saved_size
from slimformer.model.info import param_count
from slimformer.bench.timing import median, p90
from slimformer.trim import TrimConfig, trim_model
from slimformer.errors import ConfigValueError

QUICK = dict(batch_sizes=(1, 2), seq_lens=(16,), warmup=0, repeats=2, throughput_items=40,
             throughput_passes=1, throughput_seq_len=32, decode_prompt=8, decode_new_tokens=6,
             decode_repeats=1, threads=1)


def test_bench_encoder(tiny):
    r = bench(tiny["bert"], BenchConfig(**QUICK))
    assert [(p.batch, p.seq_len) for p in r.latency] == [(1, 16), (2, 16)]
    assert all(p.median_ms > 0 and p.p90_ms >= p.median_ms and p.repeats == 2 for p in r.latency)
    assert r.throughput["items"] == 40 and r.throughput["unit"] == "sentences/s"
    assert r.decode is None
    assert r.threads == 1 and r.environment["torch"]
    assert r.params == param_count(tiny["bert"])
    assert r.size_bytes > 4 * r.params * 0.9  # fp32 safetensors
    assert r.peak_rss_bytes > 0


def test_bench_causal_decodes_exact_token_count(tiny):
    r = bench(tiny["llama"], BenchConfig(**QUICK))
    assert r.decode["new_tokens"] == 6 and r.decode["tokens_per_s"] > 0
    assert r.throughput["unit"] == "windows/s" and r.throughput["tokens_per_s"] > 0


def test_median_and_p90_of_known_samples():
    assert median([5.0, 1.0, 3.0]) == 3.0 and median([4.0, 1.0, 3.0, 2.0]) == 2.5
    xs = [float(x) for x in range(10, 0, -1)]  # 10 .. 1, unsorted on purpose
    assert p90(xs) == 9.0  # nearest rank: sorted index round(0.9 * 9) = 8
    assert p90(xs + [100.0]) == 10.0 and p90([7.0]) == 7.0 and p90([1.0, 2.0]) == 2.0


def test_compare_ratios_are_other_over_base(tiny):
    """Two different models, so that other / base and base / other are told apart."""
    small = copy.deepcopy(tiny["llama"])
    trim_model(small, TrimConfig(ffn=0.5, score="magnitude", compensate="none"), None, progress=False)
    big_params, small_params = param_count(tiny["llama"]), param_count(small)
    assert small_params < big_params
    c = compare(tiny["llama"], small, BenchConfig(**QUICK))
    assert c.base.params == big_params and c.other.params == small_params
    assert c.ratios["params"] == pytest.approx(small_params / big_params) and c.ratios["params"] < 1
    assert c.ratios["size"] == pytest.approx(saved_size(small) / saved_size(tiny["llama"]))
    assert c.ratios["size"] < 1
    assert c.ratios["throughput"] == pytest.approx(
        c.other.throughput["items_per_s"] / c.base.throughput["items_per_s"])
    assert c.ratios["decode_tokens_per_s"] == pytest.approx(
        c.other.decode["tokens_per_s"] / c.base.decode["tokens_per_s"])
    speedup = c.ratios["latency_speedup"]
    assert set(speedup) == {"b1x16", "b2x16"}
    for p, q in zip(c.base.latency, c.other.latency):  # base time / other time: > 1 when other is faster
        assert speedup[f"b{p.batch}x{p.seq_len}"] == pytest.approx(p.median_ms / q.median_ms)


def test_tied_weights_count_once(tiny):
    m = tiny["llama"]  # tie_word_embeddings defaults to False for Llama; GPT-2 ties
    g = tiny["gpt2"]
    emb = g.module.get_input_embeddings().weight
    assert g.module.get_output_embeddings().weight.data_ptr() == emb.data_ptr()
    assert param_count(g) == sum(p.numel() for p in g.module.parameters())
    assert saved_size(m) > 0


def test_bad_bench_settings(tiny):
    with pytest.raises(ConfigValueError, match="repeats"):
        bench(tiny["bert"], BenchConfig(repeats=0))
    with pytest.raises(ConfigValueError, match="positions"):
        bench(tiny["bert"], BenchConfig(**{**QUICK, "seq_lens": (4096,)}))
