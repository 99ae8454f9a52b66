"""The recipe runner writes one complete output folder, or nothing."""
import dataclasses
import json

import pytest
import torch
import transformers as T

from slimformer import compress
from slimformer.errors import ConfigValueError
from slimformer.model import get_module
from slimformer.stages import STAGES, register_stage

QUICK_BENCH = {"batch_sizes": [1], "seq_lens": [16], "warmup": 0, "repeats": 1, "throughput_items": 16,
               "throughput_passes": 1, "throughput_seq_len": 32, "decode_prompt": 8,
               "decode_new_tokens": 4, "decode_repeats": 1, "threads": 1}
QUICK_EVAL = {"seq_len": 32, "max_windows": 2}


@dataclasses.dataclass
class HalveConfig:
    fail: bool = False


@pytest.fixture
def halve_stage(monkeypatch):
    """A test-only stage: halves every FFN down-projection, found through the ArchMap."""
    monkeypatch.setitem(STAGES, "halve", None)

    def run(model, cfg, ctx):
        if cfg.fail:
            raise RuntimeError("stage failed on purpose")
        with torch.no_grad():
            for blk in model.arch.blocks:
                get_module(model.module, blk.ffn.down).weight.mul_(0.5)
        return model, {"halved": model.arch.n_layers}

    register_stage("halve", HalveConfig)(run)


def test_compress_writes_model_results_report(tiny, tiny_dir, tmp_path, halve_stage):
    out = tmp_path / "run"
    recipe = {"stages": ["halve"], "evaluate": QUICK_EVAL, "bench": QUICK_BENCH}
    r = compress(tiny["llama"], recipe, out=out, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["model", "quality_vs_speed.png", "report.md", "results.json"]
    results = json.loads((out / "results.json").read_text())
    assert results["stages"][0]["stage"] == "halve" and results["stages"][0]["halved"] == 2
    assert results["quality"]["original"]["metric"] == "perplexity"
    assert results["quality"]["compressed"]["model"] == "{}+halve".format(tiny["llama"].source)
    assert results["fidelity"]["value"] > 0  # the stage changed the outputs
    assert "throughput" in results["speed"]["ratios"]
    report = (out / "report.md").read_text()
    q0, q1 = results["quality"]["original"]["value"], results["quality"]["compressed"]["value"]
    # The summary's quality row carries the two perplexities of results.json and their change.
    assert f"| ppl perplexity (wikitext2/test) | {q0:,.2f} | {q1:,.2f} | {q1 - q0:+.2f} |" in report
    assert f"| fidelity kl vs original |  | {results['fidelity']['value']:,.4f} |  |" in report
    assert "### 1. halve (" in report and "| halved | 2 |" in report  # the stage's settings table
    # every step's peak RSS: the stage in its log, the rest in "memory"; the report lists them all
    steps = results["memory"]
    assert list(steps) == ["evaluate original", "evaluate compressed", "fidelity", "bench", "write model"]
    assert all(v > 2**20 for v in steps.values())  # a process's resident set, in bytes
    mib = lambda b: f"{b / 2**20:.1f} MiB"  # noqa: E731
    top = max([results["stages"][0]["peak_rss_bytes"], *steps.values()])
    for name, v in steps.items():
        assert f"| {name} | {mib(v)}{' (largest)' if v == top else ''} |" in report
    # The saved model is a standard HF folder with the stage applied; the original is untouched.
    saved = T.AutoModelForCausalLM.from_pretrained(out / "model")
    orig = T.AutoModelForCausalLM.from_pretrained(tiny_dir["llama"])
    name = tiny["llama"].arch.blocks[0].ffn.down + ".weight"
    torch.testing.assert_close(saved.state_dict()[name], orig.state_dict()[name] * 0.5)
    torch.testing.assert_close(tiny["llama"].module.state_dict()[name], orig.state_dict()[name])
    assert json.loads((out / "model" / "slimformer.json").read_text())["stages"][0]["stage"] == "halve"
    assert r.quality["original"]["value"] != r.quality["compressed"]["value"]


def test_failed_stage_leaves_nothing(tiny, tmp_path, halve_stage):
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="on purpose"):
        compress(tiny["bert"], {"stages": [{"halve": {"fail": True}}]}, out=out, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_not_overwritten(tiny, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ConfigValueError, match="already exists"):
        compress(tiny["bert"], {}, out=out, progress=False)
    assert (out / "keep.txt").read_text() == "mine"


def test_encoder_compress_without_stages_says_so(tiny, tmp_path):
    out = tmp_path / "enc"
    r = compress(tiny["distilbert"], {"evaluate": {"split": "dev"}, "bench": QUICK_BENCH}, out=out,
                 progress=False)
    assert r.quality["original"]["metric"] == "spearman_x100"
    assert r.quality["original"]["value"] == r.quality["compressed"]["value"]
    assert "no compression stages" in (out / "report.md").read_text()
    T.AutoModel.from_pretrained(out / "model")
