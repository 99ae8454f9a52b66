"""The ArchMap finds every projection of every supported family with the right shapes."""
import pytest
import torch
import transformers as T

from conftest import ENCODERS, FAMILIES, tiny_configs
from slimformer.errors import SlimformerError, UnsupportedModelError
from slimformer.model import get_module, load, save


@pytest.mark.parametrize("family", FAMILIES)
def test_arch_map_shapes(tiny, family):
    m = tiny[family]
    cfg = tiny_configs()[family]
    arch = m.arch
    assert arch.kind == ("encoder" if family in ENCODERS else "causal")
    assert arch.n_layers == 2
    hidden = arch.hidden_size
    assert hidden == 64
    for blk in arch.blocks:
        a = blk.attn
        kv_expected = getattr(cfg, "num_key_value_heads", None) or a.n_heads
        assert (a.n_heads, a.n_kv_heads, a.head_dim) == (4, kv_expected, 16)
        if a.fused:
            w = get_module(m.module, a.qkv).weight
            assert w.shape == ((a.n_heads + 2 * a.n_kv_heads) * a.head_dim, hidden)
        else:
            assert get_module(m.module, a.q).weight.shape == (a.n_heads * a.head_dim, hidden)
            assert get_module(m.module, a.k).weight.shape == (a.n_kv_heads * a.head_dim, hidden)
            assert get_module(m.module, a.v).weight.shape == (a.n_kv_heads * a.head_dim, hidden)
        assert get_module(m.module, a.o).weight.shape == (hidden, a.n_heads * a.head_dim)
        f = blk.ffn
        width = 4 * hidden if family == "gpt2" else 96
        assert f.width == width
        assert f.gated == (family in ("llama", "mistral", "qwen2"))
        for name in ([f.gate] if f.gated else []) + [f.up]:
            assert get_module(m.module, name).weight.shape == (width, hidden)
        assert get_module(m.module, f.down).weight.shape == (hidden, width)
        for norm in (blk.attn_norm, blk.ffn_norm):
            assert get_module(m.module, norm).weight.shape == (hidden,)
        assert all(isinstance(get_module(m.module, n), torch.nn.Linear) for n in blk.linears)
    assert get_module(m.module, arch.embeddings[0]).weight.shape[1] == hidden
    if arch.kind == "causal":
        assert get_module(m.module, arch.head).weight.shape[1] == hidden
        assert get_module(m.module, arch.final_norm) is not None


def test_gqa_groups_llama(tiny):
    a = tiny["llama"].arch.blocks[0].attn
    assert a.n_heads // a.n_kv_heads == 2  # two query heads share each KV head


def test_gpt2_conv1d_normalised_and_saved_back(tiny_dir, tmp_path):
    ref = T.AutoModelForCausalLM.from_pretrained(tiny_dir["gpt2"]).eval()
    m = load(tiny_dir["gpt2"])
    assert m.arch.conv1d_transposed
    x = torch.randint(0, 300, (2, 17))
    with torch.no_grad():
        torch.testing.assert_close(m.module(x).logits, ref(x).logits, rtol=1e-5, atol=1e-5)
        save(m, tmp_path / "g")
        again = T.AutoModelForCausalLM.from_pretrained(tmp_path / "g").eval()  # vanilla transformers
        torch.testing.assert_close(again(x).logits, ref(x).logits, rtol=0, atol=0)


def test_unsupported_family_is_one_clear_error(tmp_path):
    cfg = T.T5Config(vocab_size=64, d_model=16, d_ff=32, num_layers=1, num_heads=2, d_kv=8)
    T.T5Model(cfg).save_pretrained(tmp_path / "t5")
    with pytest.raises(UnsupportedModelError, match="supported families"):
        load(tmp_path / "t5")


def test_config_that_disagrees_with_weights(tiny_dir, tmp_path):
    import json, shutil
    folder = tmp_path / "bad"
    shutil.copytree(tiny_dir["llama"], folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["head_dim"] = 8  # q_proj still has 4 * 16 rows
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SlimformerError, match="config.json"):
        load(folder)
