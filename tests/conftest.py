"""Tiny random-initialised models of every supported family (no download), and a tiny tokenizer."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import transformers as T

from slimformer.data import data_root

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs workers side by side: share the cores
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))
T.utils.logging.set_verbosity_error()
T.utils.logging.disable_progress_bar()

DATA = data_root()  # the bundled sets (package data: src/slimformer/data/sets)
VOCAB = 384
POSITIONS = 128


def _tiny_tokenizer(folder: Path) -> T.PreTrainedTokenizerFast:
    """A byte-level BPE trained on a slice of WikiText-2 validation text: real merges, tiny vocab."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    text = (DATA / "wikitext2" / "wiki.valid.raw").read_text()[:200_000]
    tok.train_from_iterator(text.splitlines(), trainer)
    fast = T.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>",
                                     eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(folder)
    return fast


def tiny_configs() -> dict[str, T.PretrainedConfig]:
    common = dict(vocab_size=VOCAB, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    llama_like = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=96, max_position_embeddings=POSITIONS, **common)
    return {
        "bert": T.BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                             intermediate_size=96, max_position_embeddings=POSITIONS, **common),
        "roberta": T.RobertaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                   intermediate_size=96, max_position_embeddings=POSITIONS + 2, **common),
        "distilbert": T.DistilBertConfig(dim=64, n_layers=2, n_heads=4, hidden_dim=96,
                                         max_position_embeddings=POSITIONS, **common),
        "gpt2": T.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=POSITIONS, **common),
        "llama": T.LlamaConfig(**llama_like),
        "mistral": T.MistralConfig(**llama_like),
        "qwen2": T.Qwen2Config(**llama_like),
    }


ENCODERS = ("bert", "roberta", "distilbert")
FAMILIES = tuple(tiny_configs())


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """name -> folder of a saved tiny model with its tokenizer (built once per session)."""
    root = tmp_path_factory.mktemp("tiny")
    tok_dir = root / "tokenizer"
    tok = _tiny_tokenizer(tok_dir)
    folders = {}
    for name, cfg in tiny_configs().items():
        torch.manual_seed(0)
        cls = T.AutoModel if name in ENCODERS else T.AutoModelForCausalLM
        module = cls.from_config(cfg).eval()
        folder = root / name
        module.save_pretrained(folder)
        tok.save_pretrained(folder)
        folders[name] = folder
    return folders


@pytest.fixture(scope="session")
def tiny(tiny_dir):
    """name -> loaded slimformer Model (shared: tests must not modify it; deepcopy first)."""
    from slimformer.model import load
    return {name: load(folder) for name, folder in tiny_dir.items()}


@pytest.fixture(scope="session")
def minilm():
    """The real embedded encoder (integration tests; shared: deepcopy before changing it)."""
    from slimformer.model import load
    return load("minilm")


@pytest.fixture(scope="session")
def smollm2():
    """The real embedded decoder (integration tests; shared: deepcopy before changing it)."""
    from slimformer.model import load
    return load("smollm2")


@pytest.fixture(scope="session")
def gemma3():
    """The real Gemma-3-270M (integration tests in one xdist group, so one worker loads it; shared:
    deepcopy before changing it)."""
    from slimformer.model import load
    return load("gemma3")


def random_llama(tiny_dir, tmp_path_factory, **config):
    """A random-initialised Llama of these config values (seed 0, the tiny tokenizer), loaded."""
    from slimformer.model import load
    cfg = T.LlamaConfig(vocab_size=VOCAB, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                        max_position_embeddings=POSITIONS, **config)
    torch.manual_seed(0)
    module = T.AutoModelForCausalLM.from_config(cfg).eval()
    folder = tmp_path_factory.mktemp("llama") / "llama"
    module.save_pretrained(folder)
    T.AutoTokenizer.from_pretrained(tiny_dir["llama"]).save_pretrained(folder)
    return load(folder)


def assert_same_embeddings(a, b, n: int = 96) -> None:
    """Two encoders give bit-identical sentence embeddings on the first n STS-B test sentences (a
    reloaded model must compute what was saved; equal embeddings imply an equal STS score, and
    checking them is cheaper than a second full evaluation)."""
    from slimformer.data import bundled_path, read_pairs
    from slimformer.evaluate.embed import encode
    sentences = [p.a for p in read_pairs(bundled_path("stsb", "test"))[:n]]
    ea, eb = encode(a, sentences), encode(b, sentences)
    assert ea.shape == (n, ea.shape[1]) and torch.equal(ea, eb)
