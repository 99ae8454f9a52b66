"""Load a supported Transformer from a folder, a GGUF file or a hub id into a Model."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
import transformers
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

from ..atomic import atomic_dir
from ..errors import ModelNotFoundError, UnsupportedModelError
from ..nn import build_modules, link_input_groups
from .arch import conv1d_to_linear, get_module, set_module
from .gguf_tokenizer import build_tokenizer
from .families import build_arch_map, check_supported, family_of_type, gguf_model_types
from . import sparse_io
from .model import Model, Pooling
from .sentence_head import read_dense
from .save import META_FILE, SHARDED_WEIGHTS, SPARSE_WEIGHTS, read_sparse_weights
from .sources import Source, cache_root, require_online, resolve

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json",
                   "tokenizer.model", "spiece.model")
ST_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")


def load(source: str | os.PathLike, dtype: torch.dtype = torch.float32, lazy: bool | str = False) -> Model:
    """Load MODEL (alias, HF folder, .gguf file or hub id) in eval mode, with its ArchMap.
    lazy: blocks stay on disk until used (lazy.py), for a model larger than memory; "auto": lazily
    when the model in `dtype` would take more than half of the memory available now."""
    src = resolve(str(source))
    if src.kind == "gguf":
        folder = gguf_cache_folder(Path(src.location))
    elif src.kind == "hub":
        folder = _hub_folder(src)
    else:
        folder = Path(src.location)
    if lazy == "auto":
        lazy = larger_than_memory(folder, dtype)
    model = load_folder(folder, dtype=dtype, lazy=bool(lazy))
    model.source = src.given
    if src.kind == "gguf":
        model.source_bytes = Path(src.location).stat().st_size
    return model


def load_folder(folder: Path, dtype: torch.dtype = torch.float32, lazy: bool = False) -> Model:
    try:
        cfg = AutoConfig.from_pretrained(folder, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as e:
        raise ModelNotFoundError(f"{folder}: config.json cannot be read ({_first_line(e)}); "
                                 "pass a valid HF model folder") from None
    check_supported(getattr(cfg, "model_type", None))
    if not any((folder / f).is_file() for f in TOKENIZER_FILES):
        # transformers would build an empty tokenizer without complaint; every score would be noise.
        raise ModelNotFoundError(f"{folder}: no tokenizer files ({', '.join(TOKENIZER_FILES)}); copy the "
                                 "tokenizer files of the original model into this folder")
    cls = AutoModel if family_of_type(cfg.model_type).kind_of(cfg) == "encoder" else AutoModelForCausalLM
    meta = _slimformer_meta(folder)
    masks: dict = {}
    from .compressed_tensors_io import load_compressed_tensors, quantization_config
    ct = quantization_config(cfg)
    store = None
    try:
        if lazy:
            module, store = _lazy_skeleton(cls, cfg, folder, meta, ct, dtype)
        elif meta.get("weights") in (SPARSE_WEIGHTS, SHARDED_WEIGHTS):
            module, masks = _load_slimformer_weights(cls, cfg, folder, meta, dtype)
        elif ct is not None:  # llm-compressor / `--format compressed-tensors`: slimformer's own kernels
            del cfg.quantization_config
            module = cls.from_config(cfg, dtype=dtype)
            load_compressed_tensors(module, folder, ct)
        else:
            module = cls.from_pretrained(folder, config=cfg, dtype=dtype, trust_remote_code=False)
            _normalise_conv1d(module)
    except _weight_read_errors() as e:
        raise _weight_error(folder, e) from None
    module.eval()
    if store is None:
        check_finite(module, folder)  # lazily: each tensor as it is read
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    except (OSError, ValueError, TypeError) as e:
        raise ModelNotFoundError(f"{folder}: no usable tokenizer ({_first_line(e)}); copy the tokenizer "
                                 "files of the original model into this folder") from None
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token  # batched LM scoring needs a pad id (masked out)
    arch = build_arch_map(module)
    if store is not None:
        try:
            store.blocks = [b.name for b in arch.blocks]
            store.install(module)
        except _weight_read_errors() as e:
            raise _weight_error(folder, e) from None
    pooling, extra = _sentence_transformers_config(folder)
    weights = [p for pat in ("*.safetensors", "*.bin") for p in folder.glob(pat)]
    model = Model(module=module, tokenizer=tokenizer, arch=arch, source=str(folder), path=folder,
                  pooling=pooling, extra_files=extra, log=list(meta.get("stages", [])), masks=masks,
                  source_bytes=sum(p.stat().st_size for p in weights), lazy=store)
    if meta.get("modules") or meta.get("quant") or ct is not None:
        link_input_groups(model.module, arch.input_groups)  # runtime links of q/k/v and gate/up
    return model


def larger_than_memory(folder: Path, dtype: torch.dtype = torch.float32, fraction: float = 0.5) -> bool:
    """Whether a plain safetensors folder's weights in `dtype` exceed `fraction` of available memory."""
    import psutil
    from safetensors import safe_open
    from .lazy import safetensors_index
    if (folder / META_FILE).is_file():
        return False  # a slimformer folder: compressed, read whole
    try:
        index = safetensors_index(folder)
    except ModelNotFoundError:
        return False
    numel = 0
    try:
        for path in sorted({p for p, _ in index.values()}):
            with safe_open(path, framework="pt") as f:
                for key in f.keys():
                    n = 1
                    for d in f.get_slice(key).get_shape():
                        n *= d
                    numel += n
    except _weight_read_errors() as e:  # a truncated shard of a sharded folder
        raise _weight_error(folder, e) from None
    return numel * torch.finfo(dtype).bits // 8 > fraction * psutil.virtual_memory().available


def _lazy_skeleton(cls, cfg, folder: Path, meta: dict, ct, dtype: torch.dtype):
    """The module on the meta device and the index of its tensors in the folder's safetensors."""
    from accelerate import init_empty_weights
    from .lazy import LazyWeights, safetensors_index
    if meta.get("weights") or ct is not None:
        raise UnsupportedModelError(f"{folder}: lazy loading reads plain HF folders (dense safetensors); this "
                                    "one holds compressed weights: load it without --lazy")
    with init_empty_weights(include_buffers=False):
        module = cls.from_config(cfg, dtype=dtype)
    module.tie_weights()  # a tied head is the embeddings' tensor, read once
    from transformers.pytorch_utils import Conv1D
    conv = {f"{n}.weight" for n, m in module.named_modules() if isinstance(m, Conv1D)}
    _normalise_conv1d(module)
    index = safetensors_index(folder)
    index = _match_prefix(index, module)
    tied = _tied_names(module)
    missing = [k for k, t in module.state_dict(keep_vars=True).items()
               if t.device.type == "meta" and k not in index and k not in tied]
    if missing:
        raise KeyError(f"the weight files do not hold {len(missing)} tensors of the config ({missing[0]}, ...)")
    store = LazyWeights(index, dtype, [], transposed={k for k in conv if k in index},
                        spill_root=cache_root() / "spill")
    return module, store


def _match_prefix(index: dict, module) -> dict:
    """The index under the module's own names: a checkpoint of the bare base model lacks the
    "model." prefix, one of a task model read as its base model carries it (transformers maps both)."""
    names, prefix = set(module.state_dict()), getattr(module, "base_model_prefix", "")
    if not prefix or names & index.keys():
        return index
    added = {f"{prefix}.{k}": v for k, v in index.items()}
    stripped = {k[len(prefix) + 1:]: v for k, v in index.items() if k.startswith(prefix + ".")}
    return max((added, stripped), key=lambda cand: len(names & cand.keys()))


def _tied_names(module) -> set[str]:
    """State-dict names whose tensor is the same object as an earlier name's (a tied LM head)."""
    seen, tied = set(), set()
    for k, t in module.state_dict(keep_vars=True).items():
        if id(t) in seen:
            tied.add(k)
        seen.add(id(t))
    return tied


def _weight_read_errors() -> tuple[type[BaseException], ...]:
    """What reading weight files raises: a truncated or corrupt safetensors file raises the Rust
    binding's SafetensorError (not an OSError); torch.load(weights_only=True) raises
    UnpicklingError for a pickle that would run code (transformers may wrap it in an OSError)."""
    import pickle
    from safetensors import SafetensorError
    return (RuntimeError, OSError, ValueError, KeyError, EOFError, pickle.UnpicklingError, SafetensorError)


def _weight_error(folder: Path, e: BaseException) -> Exception:
    """The one-line error for a weight file that cannot be read (see _weight_read_errors)."""
    import pickle
    from safetensors import SafetensorError
    from ..errors import CorruptModelError
    chain = [e]  # transformers re-raises some errors as OSError: look through the causes
    while len(chain) < 8 and (chain[-1].__cause__ or chain[-1].__context__) is not None:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)
    refused = [c for c in chain if isinstance(c, pickle.UnpicklingError)]
    if refused:  # the innermost one names the global it would have called
        return CorruptModelError(f"{folder}: a pickled weight file (.bin) holds objects other than tensors, "
                                 f"which could run code ({_first_line(refused[-1])}); torch.load("
                                 "weights_only=True) refused it, nothing in it ran. Convert a checkpoint you "
                                 "trust to safetensors, or use a safetensors copy of the model")
    if any(isinstance(c, SafetensorError) for c in chain):
        return CorruptModelError(f"{folder}: a .safetensors file is truncated or corrupt ({_first_line(e)}); "
                                 "download or copy the model again")
    return ModelNotFoundError(f"{folder}: the weights cannot be loaded ({_first_line(e)}); check that "
                              "config.json matches the weight files")


def check_finite(module: torch.nn.Module, folder: Path | str) -> None:
    """Refuse weights holding NaN or inf (a diverged or corrupt checkpoint): every score would be NaN
    and GPTQ's Hessian inverse would fail. One sum per floating-point parameter and buffer (a NaN or
    inf element makes the sum NaN or inf); an element-wise check only where the sum is not finite."""
    from ..errors import CorruptModelError
    with torch.no_grad():
        for kind, named in (("parameter", module.named_parameters()), ("buffer", module.named_buffers())):
            for name, t in named:
                if not t.is_floating_point() or t.numel() == 0 or torch.isfinite(t.sum()):
                    continue
                nan, inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
                if nan or inf:  # else the sum only overflowed
                    raise CorruptModelError(
                        f"{folder}: {kind} {name} holds {nan:,} NaN and {inf:,} inf values (of "
                        f"{t.numel():,}); the file is corrupt or its training diverged: download it again "
                        "or use an earlier checkpoint")


def _slimformer_meta(folder: Path) -> dict:
    path = folder / META_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def _load_slimformer_weights(cls, cfg, folder: Path, meta: dict, dtype: torch.dtype):
    """A folder with pruned weights stored compressed (see save.py / sparse_io.py)."""
    module = cls.from_config(cfg, dtype=dtype)
    _normalise_conv1d(module)  # the file holds the linear [out, in] layout
    stored = read_sparse_weights(folder, meta)
    build_modules(module, _described_modules(meta))  # compressed modules, empty, of the stored form
    if meta.get("trim"):
        from .shapes import apply_shape_map
        shapes = {k: tuple(v.shape) for k, v in stored.items() if not k.endswith(sparse_io.SUFFIXES)}
        shapes.update({k: tuple(stored[f"{k}.__shape"].tolist()) for k in sparse_io.packed_names(stored)})
        apply_shape_map(module, shapes, meta["trim"])
    state, masks = {}, {}
    for key in sparse_io.packed_names(stored):
        state[key], keep = sparse_io.unpack(key, stored)
        masks[key[: -len(".weight")]] = keep
    state.update({k: v for k, v in stored.items() if not k.endswith(sparse_io.SUFFIXES)})
    missing, unexpected = module.load_state_dict(state, strict=False)
    if unexpected or set(missing) - set(meta.get("tied", {})):
        raise KeyError(f"{SPARSE_WEIGHTS} does not match the config (missing {sorted(missing)[:3]}, "
                       f"unexpected {sorted(unexpected)[:3]})")
    module.tie_weights()
    return module, masks


def _described_modules(meta: dict) -> dict[str, dict]:
    """slimformer.json's compressed modules ("modules"; folders of 0.1 kept quantized linears under
    "quant" and low-rank factors under "trim")."""
    described = dict(meta.get("modules", {}))
    for name, desc in meta.get("quant", {}).get("layers", {}).items():
        described.setdefault(name, {"type": "quant_linear", **desc})
    for name, (n_in, rank, n_out, bias) in meta.get("trim", {}).get("lowrank", {}).items():
        described.setdefault(name, {"type": "low_rank", "in": n_in, "rank": rank, "out": n_out, "bias": bias})
    return described


def _normalise_conv1d(module) -> None:
    """Replace GPT-2's Conv1D by Linear once, so every method sees [out, in] weights."""
    from transformers.pytorch_utils import Conv1D
    names = [n for n, m in module.named_modules() if isinstance(m, Conv1D)]
    for name in names:
        set_module(module, name, conv1d_to_linear(get_module(module, name)))


def _sentence_transformers_config(folder: Path) -> tuple[Pooling, dict[str, bytes]]:
    """The sentence-transformers modules a folder declares after its Transformer (modules.json):
    Pooling, Dense layers, Normalize, in that order; mean pooling when there is no modules.json.
    Their files are returned too, so that a save or an export carries them."""
    extra: dict[str, bytes] = {}
    pooling = Pooling()
    for name in ST_FILES:
        if (folder / name).is_file():
            extra[name] = (folder / name).read_bytes()
    if "modules.json" not in extra:
        return pooling, extra
    dense, seen = [], []
    for mod in json.loads(extra["modules.json"]):
        kind = mod.get("type", "").rpartition(".")[2]
        if (kind in ("Dense", "Normalize") and "Pooling" not in seen) or (seen and seen[-1] == "Normalize"):
            raise UnsupportedModelError(f"{folder}/modules.json: {kind} after {', '.join(seen) or 'nothing'}; "
                                        "slimformer runs Transformer, Pooling, Dense layers, Normalize in that order")
        seen.append(kind)
        if kind == "Pooling":
            rel = f"{mod['path']}/config.json"
            if (folder / rel).is_file():
                extra[rel] = (folder / rel).read_bytes()
                pooling.mode = _pooling_mode(folder, json.loads(extra[rel]))
        elif kind == "Dense":
            layer, files = read_dense(folder, mod["path"])
            dense.append(layer)
            extra.update(files)
        elif kind == "Normalize":
            pooling.normalize = True
        elif kind != "Transformer":
            raise UnsupportedModelError(f"{folder}/modules.json: sentence-transformers module {mod.get('type')!r} "
                                        "is not run here; slimformer runs Transformer, Pooling, Dense, Normalize")
    pooling.dense = tuple(dense)
    if "sentence_bert_config.json" in extra:
        pooling.max_length = json.loads(extra["sentence_bert_config.json"]).get("max_seq_length")
    return pooling, extra


def _pooling_mode(folder: Path, pc: dict) -> str:
    other = [k for k in ("pooling_mode_mean_sqrt_len_tokens", "pooling_mode_weightedmean_tokens",
                         "pooling_mode_lasttoken") if pc.get(k)]
    if other:
        raise UnsupportedModelError(f"{folder}: pooling {other[0][len('pooling_mode_'):]} is not computed here; "
                                    "slimformer pools with cls, max or mean tokens")
    if pc.get("pooling_mode_cls_token"):
        return "cls"
    return "max" if pc.get("pooling_mode_max_tokens") else "mean"


def gguf_cache_folder(gguf_path: Path) -> Path:
    """Dequantize a GGUF once (slow) into a safetensors folder in the user cache, reuse it after."""
    st = gguf_path.stat()
    key = f"{gguf_path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{transformers.__version__}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    folder = cache_root() / "gguf" / f"{gguf_path.stem}-{digest}"
    if (folder / "config.json").is_file():
        return folder
    header = _check_gguf_arch(gguf_path)
    with atomic_dir(folder, keep_existing=True) as tmp:
        kw = dict(gguf_file=gguf_path.name, trust_remote_code=False)
        tok = build_tokenizer(gguf_path)  # from the file's own vocabulary (gguf_tokenizer.py says why)
        cfg = AutoConfig.from_pretrained(gguf_path.parent, **kw)
        _header_facts_into(cfg, header)
        # The weights will be plain fp32; no GGUF marker, so the folder loads as such.
        if hasattr(cfg, "quantization_config"):
            del cfg.quantization_config
        from .gguf_dequant import dequantize_gguf
        dequantize_gguf(gguf_path, cfg, tmp)  # tensor by tensor: never the whole model in memory
        cfg.dtype = torch.float32
        cfg.save_pretrained(tmp)
        from transformers import GenerationConfig
        GenerationConfig.from_model_config(cfg).save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "SOURCE.txt").write_text(f"dequantized from {gguf_path} by slimformer\n")
    return folder


def _check_gguf_arch(path: Path) -> dict:
    """Refuse architectures no family reads; returns the header's scalar and bool-array keys,
    without the architecture prefix."""
    from .gguf_header import read_header
    header = read_header(path)  # a truncated or foreign file: ModelNotFoundError
    arch = header.values.get("general.architecture")
    prefix = f"{arch}."
    facts = {k[len(prefix):]: v for k, v in header.values.items() if k.startswith(prefix)
             and (not isinstance(v, list) or all(isinstance(x, bool) for x in v))}
    if arch not in gguf_model_types():
        check_supported(f"gguf:{arch}")
    return facts


def _header_facts_into(cfg, header: dict) -> None:
    """Header facts transformers 5.17 does not carry into the config (it keeps the config class's
    defaults): the key length as head_dim (qwen3) and as the attention scale, the per-layer sliding pattern as layer_types
    and the sliding layers' rope base (gemma3 files whose pattern is not every 6th layer global)."""
    key_length = header.get("attention.key_length")
    if key_length and getattr(cfg, "head_dim", None) not in (None, key_length):
        cfg.head_dim = int(key_length)
    if key_length and getattr(cfg, "query_pre_attn_scalar", None) is not None:
        cfg.query_pre_attn_scalar = int(key_length)  # llama.cpp scales attention by key_length^-0.5
    pattern = header.get("attention.sliding_window_pattern")
    if isinstance(pattern, list) and getattr(cfg, "layer_types", None) is not None \
            and len(pattern) == len(cfg.layer_types):
        cfg.layer_types = ["sliding_attention" if p else "full_attention" for p in pattern]
    params = getattr(cfg, "rope_parameters", None)
    if "rope.freq_base_swa" in header and isinstance(params, dict) \
            and isinstance(params.get("sliding_attention"), dict):
        params["sliding_attention"]["rope_theta"] = float(header["rope.freq_base_swa"])


def _hub_folder(src: Source) -> Path:
    from huggingface_hub import snapshot_download
    try:
        return Path(snapshot_download(src.location, local_files_only=True))
    except Exception:
        pass
    require_online(src.location)
    try:
        return Path(snapshot_download(src.location, allow_patterns=[
            "*.json", "*.safetensors", "*.txt", "*.model", "1_Pooling/*"]))
    except Exception as e:
        raise ModelNotFoundError(f"{src.location}: cannot download from the hub ({_first_line(e)}); "
                                 "check the id, or pass a local folder") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


