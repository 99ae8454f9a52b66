"""Stage logs are dataclasses read by attribute; report.md shows each stage's settings as a short
table with per-layer detail summarised (every value stays in results.json); sizes are set against the
file the user gave, and an output larger than it is said plainly."""
import copy
import json
import statistics

import pytest

from slimformer import compress
from slimformer.bench.size import saved_size
from slimformer.prune.stage import PruneLog
from slimformer.quant.stage import QuantizeLog
from slimformer.stages import PluginLog, as_stage_log

QUICK_BENCH = {"batch_sizes": [1], "seq_lens": [16], "warmup": 0, "repeats": 1, "throughput_items": 16,
               "throughput_passes": 1, "throughput_seq_len": 32, "decode_prompt": 8,
               "decode_new_tokens": 4, "decode_repeats": 1, "threads": 1}
QUICK_EVAL = {"seq_len": 32, "max_windows": 2, "fidelity": False}
CAL = {"samples": 4, "seq_len": 32}
LARGER = "LARGER THAN WHAT YOU GAVE"


def test_stage_log_serialises_in_order_and_splits_settings_from_detail():
    log = PruneLog(stage="prune", method="wanda", pattern="2:4", target_sparsity=0.5, allocation="uniform",
                   sparsity_of_block_linears=0.5, per_layer={"a": 0.5, "b": 0.25}, wall_s=1.5, peak_rss_bytes=7)
    d = log.to_dict()
    assert list(d)[0] == "stage" and list(d)[-2:] == ["wall_s", "peak_rss_bytes"]
    assert d["per_layer"] == {"a": 0.5, "b": 0.25} and d["wall_s"] == 1.5 and d["peak_rss_bytes"] == 7
    assert "owl_block_sparsity" not in d and "calibration" not in d  # not applicable: left out
    assert dict(log.settings()) == {"method": "wanda", "pattern": "2:4", "target_sparsity": 0.5,
                                    "allocation": "uniform", "sparsity_of_block_linears": 0.5}
    assert log.detail() == {"per_layer": {"a": 0.5, "b": 0.25}}


def test_a_plugin_stage_may_return_a_plain_dict():
    log = as_stage_log("halve", {"halved": 2, "calibration": {"data": "x"}})
    assert isinstance(log, PluginLog) and log.stage == "halve" and log.calibration == {"data": "x"}
    assert log.settings() == [("halved", 2)]
    assert log.to_dict() == {"stage": "halve", "calibration": {"data": "x"}, "halved": 2, "wall_s": 0.0,
                             "peak_rss_bytes": 0}
    with pytest.raises(TypeError, match="returned a int"):
        as_stage_log("halve", 3)


def _spread(values) -> str:
    v = [float(x) for x in values]
    if len(set(v)) == 1:
        return f"all {v[0]:.4g}"
    return f"min {min(v):.4g}, median {statistics.median(v):.4g}, max {max(v):.4g}"


def test_report_shows_stage_settings_as_tables_and_no_per_layer_dump(tiny, tmp_path):
    out = tmp_path / "run"
    recipe = {"calibration": CAL, "evaluate": QUICK_EVAL, "bench": QUICK_BENCH,
              "stages": [{"prune": {"method": "wanda", "allocation": "owl", "owl_lambda": 0.2,
                                    "owl_threshold": 1.0, "sparsity": 0.5}},
                         {"quantize": {"method": "rtn", "bits": 8, "activations": "dynamic", "smoothquant": 0.5}}]}
    r = compress(tiny["llama"], recipe, out=out, progress=False)
    assert isinstance(r.stages[0], PruneLog) and isinstance(r.stages[1], QuantizeLog)
    report = (out / "report.md").read_text()
    prune, quant = json.loads((out / "results.json").read_text())["stages"]
    section = report.split("## Stages", 1)[1].split("## Speed", 1)[0]
    # each stage: a heading, the calibration in one line, a setting | value table
    assert "### 1. prune (" in section and "### 2. quantize (" in section
    assert "| setting | value |" in section and "| method | wanda |" in section
    assert f"| format | {quant['format']} |" in section and "| allocation | owl |" in section
    cal = prune["calibration"]
    assert f"Calibration: {cal['data']}/{cal['split']}, {cal['samples']} samples x seq_len {cal['seq_len']}, " \
           f"{cal['tokens']:,} tokens." in section
    assert "sha256" not in section and "{" not in section  # no dict text
    # per-layer detail: every value in results.json, one summary row each in the report
    names = set(tiny["llama"].arch.linears)
    assert set(prune["per_layer"]) == names
    assert not any(n in report for n in names)
    assert f"| per_layer | {len(names)} | {_spread(prune['per_layer'].values())} |" in section
    owl = prune["owl_block_sparsity"]
    assert len(set(owl)) > 1, "the test needs unequal OWL blocks"
    assert f"| owl_block_sparsity | {len(owl)} | {_spread(owl)} |" in section
    assert len(quant["scales"]) > 1 and f"| scales | {len(quant['scales'])} | all smoothquant |" in section
    # the model's saved log holds the same dicts
    saved = json.loads((out / "model" / "slimformer.json").read_text())["stages"]
    assert [s["stage"] for s in saved] == ["prune", "quantize"] and saved[0]["per_layer"] == prune["per_layer"]


@pytest.mark.parametrize("factor", [0.25, 4.0])
def test_output_larger_than_the_file_given_is_said(tiny, tmp_path, factor):
    """A quantized source (a GGUF, say) is far smaller than the fp32 model slimformer loads: the
    output is set against the file given, and a larger output is said in the notes and the report."""
    model = copy.deepcopy(tiny["llama"])
    model.source_bytes = int(saved_size(model) * factor)  # the file "given": smaller, or larger
    out = tmp_path / "run"
    r = compress(model, {"evaluate": QUICK_EVAL, "bench": QUICK_BENCH}, out=out, progress=False)
    results = json.loads((out / "results.json").read_text())
    report = (out / "report.md").read_text()
    src = results["source"]
    assert src["bytes"] == model.source_bytes and src["output_bytes"] == results["speed"]["other"]["size_bytes"]
    assert src["output_ratio"] == pytest.approx(src["output_bytes"] / model.source_bytes)
    notes = [n for n in r.notes if n.startswith(LARGER)]
    row = f"| size vs the file you gave ({tiny['llama'].source.rsplit('/', 1)[-1]}) | " \
          f"{model.source_bytes / 2**20:.1f} MiB | {src['output_bytes'] / 2**20:.1f} MiB | {src['output_ratio']:.2f}x"
    assert row in report
    if factor < 1:
        assert src["output_ratio"] > 3.9
        assert len(notes) == 1 and f"{src['output_ratio']:.2f}x the size of {model.source}" in notes[0]
        assert f"> {notes[0]}" in report and f"{src['output_ratio']:.2f}x (LARGER) |" in report
        assert results["notes"] == r.notes
    else:
        assert src["output_ratio"] < 0.26
        assert notes == [] and LARGER not in report and "(LARGER)" not in report


def test_no_size_row_when_the_file_given_is_the_saved_model(tiny, tmp_path):
    model = copy.deepcopy(tiny["llama"])
    model.source_bytes = saved_size(model)  # an fp32 folder: the summary's size ratio says it all
    out = tmp_path / "run"
    r = compress(model, {"evaluate": QUICK_EVAL, "bench": QUICK_BENCH}, out=out, progress=False)
    report = (out / "report.md").read_text()
    assert r.source["output_ratio"] == pytest.approx(1.0, abs=1e-6)
    assert "size vs the file you gave" not in report and not any(n.startswith(LARGER) for n in r.notes)
