"""The tokenizer of a GGUF file, built from the file's own vocabulary (tokenizer.ggml.*).

Why not transformers' GGUF converter: with the pinned transformers (5.17) it turns a SentencePiece
vocabulary (llama.cpp's "llama" model: Gemma, Llama-2-style files) into byte-level pieces without
a BOS, which scores Gemma-3-270M at WikiText-2 ppl 213 instead of 38. So this module rebuilds what
llama.cpp's own tokenizer does (llama-vocab.cpp), with the `tokenizers` library:

- "llama" (SentencePiece BPE): text with spaces escaped as U+2581 (and a leading one when
  add_space_prefix), split into characters, adjacent pieces merged while their join is a token,
  the join with the highest score first; characters no token covers become <0xNN> byte tokens.
  A BPE model whose merge ranks follow the joined token's score does the same merges.
- user-defined tokens (type 4: Gemma's newline and tab runs, HTML tags) are cut out of the raw
  text before the model runs, as llama.cpp does; control tokens are special tokens.
- BOS / EOS are added when the file says so (tokenizer.ggml.add_bos_token / add_eos_token).

- "gpt2" (byte-level BPE, merges in the file) with pre-tokenizer "gpt-2" (GPT-2's split, as
  slimformer's exports name a tokenizer that splits that way) or "default" (what its earlier
  exports wrote for those); built here because transformers picks its converter by
  architecture (its Gemma converter fails on a byte-level vocabulary).

Byte-level vocabularies with a named pre-tokenizer (SmolLM2's "smollm", Llama 3's, Qwen's) are
left to transformers' converter, which knows their split regexes (checked against llama.cpp in
the tests).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelNotFoundError

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6  # llama.h LLAMA_TOKEN_TYPE_*
SPACE = "\u2581"  # SentencePiece's visible space


@dataclass
class GGUFVocab:
    model: str
    pre: str  # llama.cpp's pre-tokenizer name (byte-level vocabularies)
    tokens: list[str]
    merges: list[str]
    scores: list[float]
    types: list[int]
    special: dict[str, int]  # bos / eos / unk / pad -> id
    add_bos: bool
    add_eos: bool
    add_space_prefix: bool


def read_vocab(path: Path) -> GGUFVocab:
    from .gguf_header import read_header
    keys = ("tokens", "merges", "scores", "token_type")
    values = read_header(path, arrays=tuple(f"tokenizer.ggml.{k}" for k in keys)).values

    def get(key, default=None):
        return values.get(f"tokenizer.ggml.{key}", default)

    tokens = get("tokens")
    if not tokens:
        raise ModelNotFoundError(f"{path} holds no vocabulary (tokenizer.ggml.tokens); use a GGUF file with "
                                 "its tokenizer, or an HF folder")
    ids = {name: get(f"{key}_token_id") for name, key in
           (("bos", "bos"), ("eos", "eos"), ("unk", "unknown"), ("pad", "padding"))}
    model = str(get("model", ""))
    spm = model == "llama"  # llama.cpp's defaults when a key is absent: BOS and a space prefix for SPM only
    return GGUFVocab(model=model, pre=str(get("pre", "default")), tokens=list(tokens),
                     merges=list(get("merges") or []),
                     scores=list(get("scores") or [0.0] * len(tokens)),
                     types=list(get("token_type") or [NORMAL] * len(tokens)),
                     special={k: int(v) for k, v in ids.items() if v is not None},
                     add_bos=bool(get("add_bos_token", spm)), add_eos=bool(get("add_eos_token", False)),
                     add_space_prefix=bool(get("add_space_prefix", spm)))


def tokenizer_from_gguf(path: Path):
    """A PreTrainedTokenizerFast for the file's vocabulary, or None where transformers' own
    converter is the one to use (see the module docstring)."""
    return tokenizer_from_vocab(read_vocab(path))


# "gpt-2": GPT-2's own regex. "default" is what slimformer's exports wrote before they identified the
# pre-tokenizer (export/gguf_pretokenizer.py), always from GPT-2-split tokenizers: read as those
# were made (llama.cpp's own "default" chain splits digits and punctuation runs differently).
GPT2_SPLIT = ("default", "gpt-2")


def tokenizer_from_vocab(vocab: GGUFVocab):
    if vocab.model == "llama":
        return _wrap(_spm_bpe(vocab), vocab)
    if vocab.model == "gpt2" and vocab.pre in GPT2_SPLIT:
        return _wrap(_byte_bpe(vocab), vocab)
    return None


def spm_merges(vocab: GGUFVocab) -> list[tuple[str, str]]:
    """Every (left, right) split of a token into two tokens, ranked by the joined token's score
    (highest first): the order in which llama.cpp's SentencePiece-BPE loop joins pairs. Byte
    tokens never join (<0x41> is not the letter A)."""
    index = {t: i for i, t in enumerate(vocab.tokens) if vocab.types[i] != BYTE}
    ranked = []
    for token, i in index.items():
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in index and right in index:
                # ties (splits of one token) go by the pieces' own scores, then ids: any fixed order
                ranked.append((-vocab.scores[i], i, index[left], index[right], left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


def _spm_bpe(vocab: GGUFVocab):
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers
    ids = {t: i for i, t in enumerate(vocab.tokens)}
    unk = vocab.tokens[vocab.special["unk"]] if "unk" in vocab.special else None
    tok = Tokenizer(models.BPE(vocab=ids, merges=spm_merges(vocab), unk_token=unk, byte_fallback=True,
                               fuse_unk=True))
    steps = ([normalizers.Prepend(SPACE)] if vocab.add_space_prefix else []) + [normalizers.Replace(" ", SPACE)]
    tok.normalizer = normalizers.Sequence(steps)
    tok.decoder = decoders.Sequence([decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
                                    + ([decoders.Strip(SPACE, 1, 0)] if vocab.add_space_prefix else []))
    return _add_special(tok, vocab)


def _byte_bpe(vocab: GGUFVocab):
    """GPT-2's byte-level BPE: the regex split, bytes mapped to printable characters, the file's merges."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    ids = {t: i for i, t in enumerate(vocab.tokens)}
    merges = [tuple(m.split(" ", 1)) for m in vocab.merges]
    tok = Tokenizer(models.BPE(vocab=ids, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    return _add_special(tok, vocab)


def _add_special(tok, vocab: GGUFVocab):
    """User-defined tokens matched on the raw text before the model, like llama.cpp's special-token
    partition; control tokens as special tokens."""
    from tokenizers import AddedToken
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t, ty in zip(vocab.tokens, vocab.types)
                    if ty == USER_DEFINED])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, ty in zip(vocab.tokens, vocab.types) if ty in (CONTROL, UNKNOWN)])
    return tok


def _wrap(tok, vocab: GGUFVocab):
    """transformers' fast tokenizer around it; given add_bos / add_eos it writes the BOS / EOS
    template itself (and keeps the flags through save_pretrained)."""
    from transformers import PreTrainedTokenizerFast
    names = {f"{k}_token": vocab.tokens[i] for k, i in vocab.special.items()}
    return PreTrainedTokenizerFast(tokenizer_object=tok, add_bos_token=vocab.add_bos,
                                   add_eos_token=vocab.add_eos, **names)


def cached_tokenizer(path: Path):
    """The file's tokenizer, built once (reading a 262k-token vocabulary and deriving its merges
    takes ~40 s) and kept in slimformer's cache beside the dequantized folders, keyed by the file's
    path, size and mtime and by the tokenizers version."""
    import hashlib
    import tokenizers
    from transformers import PreTrainedTokenizerFast
    from ..atomic import atomic_dir
    from .sources import cache_root
    path = Path(path)
    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{tokenizers.__version__}"
    folder = cache_root() / "tokenizers" / f"{path.stem}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    if not (folder / "tokenizer.json").is_file():
        with atomic_dir(folder, keep_existing=True) as tmp:
            build_tokenizer(path).save_pretrained(tmp)
    return PreTrainedTokenizerFast.from_pretrained(folder)


def build_tokenizer(path: Path):
    """Built here for the vocabulary models in BUILT, by transformers' GGUF converter otherwise."""
    path = Path(path)
    tok = tokenizer_from_gguf(path)
    if tok is None:
        from transformers import PreTrainedTokenizerFast
        # the fast class directly: AutoTokenizer would first build a transformers config from the
        # header, which per-layer head counts / FFN widths (trimmed exports) do not fit
        try:
            tok = PreTrainedTokenizerFast.from_pretrained(path.parent, gguf_file=path.name)
        except Exception as e:  # noqa: BLE001 - any failure means no usable vocabulary
            raise ModelNotFoundError(f"{path}: its tokenizer cannot be read "
                                     f"({str(e).splitlines()[0][:120]}); use a GGUF file with its tokenizer") from None
    return tok
