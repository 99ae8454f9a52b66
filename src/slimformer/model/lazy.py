"""Lazy weights: a module skeleton on the meta device whose blocks are read from disk when used.

slimformer's stages work one block at a time (engine/sequential.py), so a model far larger than
memory can be compressed if only the block being worked on is resident. `load(..., lazy=True)`
builds the module with every parameter on the meta device (accelerate's init_empty_weights;
buffers such as rotary tables stay real), memory-maps the safetensors files, and reads:
- the tensors outside the blocks (embeddings, final norm, head) at once, kept resident: their
  size does not grow with depth, and a compressed copy shares them with the original;
- a block's tensors when the block is used: a forward pre-hook reads them and a forward hook
  drops them again (an evaluation streams the model through memory), and the engine `hold`s a
  block across its statistics pass, rewrite and propagation, then `commit`s it: the rewritten
  tensors (quantized codes, pruned weights) go to a spill file and leave memory.

The index maps each tensor name to the file and key it is read from: the source's safetensors
at first, a block's spill file once a stage rewrote it. Source tensors are cast to the load dtype
and checked finite when read; spilled ones are read back exactly as written.
"""
from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import weakref
from pathlib import Path

import torch
from torch import nn

from ..errors import CorruptModelError, ModelNotFoundError

PASSING, HELD = "passing", "held"
REST = ""  # the resident-state key of the tensors outside the blocks (embeddings, final norm, head)


def safetensors_index(folder: Path, stem: str = "model") -> dict[str, tuple[str, str]]:
    """tensor name -> (file, key) for `stem.safetensors` or a sharded `stem.safetensors.index.json`."""
    from safetensors import safe_open
    single, sharded = folder / f"{stem}.safetensors", folder / f"{stem}.safetensors.index.json"
    if sharded.is_file():
        weight_map = json.loads(sharded.read_text())["weight_map"]
        return {k: (str(folder / f), k) for k, f in weight_map.items()}
    if single.is_file():
        from safetensors import SafetensorError
        try:
            with safe_open(str(single), framework="pt") as f:
                return {k: (str(single), k) for k in f.keys()}
        except (SafetensorError, OSError) as e:
            raise CorruptModelError(f"{folder}: a .safetensors file is truncated or corrupt "
                                    f"({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
                                    "download or copy the model again") from None
    raise ModelNotFoundError(f"{folder}: lazy loading reads safetensors weights ({single.name} or "
                             f"{sharded.name}), and there are none; convert the weights to safetensors "
                             "or load without --lazy")


class LazyWeights:
    """Where every tensor of one lazily loaded module lives, and which blocks are resident."""

    def __init__(self, index: dict[str, tuple[str, str]], dtype: torch.dtype, blocks: list[str],
                 transposed: set[str] | None = None, spill_root: Path | None = None):
        self.index = dict(index)
        self.dtype = dtype
        self.blocks = list(blocks)
        self.transposed = set(transposed or ())  # GPT-2 Conv1D weights: stored [in, out]
        self.spilled: set[str] = set()  # names read back exactly (written by commit)
        self.spill_root = spill_root
        self._spill_dir: Path | None = None
        self._files: dict[str, object] = {}
        self.resident: dict[str, str] = {}  # block name -> PASSING | HELD
        self._modules: dict[str, weakref.ref] = {}

    # -- reading and placing tensors -------------------------------------------------------
    def _open(self, path: str):
        from safetensors import safe_open
        handle = self._files.get(path)
        if handle is None:
            handle = self._files[path] = safe_open(path, framework="pt")
        return handle

    def read(self, name: str) -> torch.Tensor:
        path, key = self.index[name]
        t = self._open(path).get_tensor(key)
        if name in self.spilled:
            return t
        if name in self.transposed:
            t = t.t().contiguous()
        if t.is_floating_point():
            t = t.to(self.dtype)
            if not torch.isfinite(t.sum()) and not bool(torch.isfinite(t).all()):
                raise CorruptModelError(f"{path}: tensor {key} holds NaN or inf values; the file is corrupt "
                                        "or its training diverged: download it again or use an earlier checkpoint")
        return t

    def _stored_names(self, module: nn.Module, prefix: str) -> list[str]:
        """The module's persistent tensors (what a state_dict holds), by full name."""
        return [f"{prefix}.{k}" if prefix else k for k in module.state_dict(keep_vars=True)]

    def materialise(self, module: nn.Module, prefix: str, state: str = HELD) -> None:
        """Read every meta tensor of `module` (named `prefix`) from the index."""
        for full in self._stored_names(module, prefix):
            local = full[len(prefix) + 1:] if prefix else full
            if _get(module, local).device.type != "meta" or full not in self.index:
                continue  # already real, or tied to a tensor read under another name
            _set(module, local, self.read(full))
        self.close_files()
        _drop_kernels(module)  # kernels packed from the old tensors are stale
        if prefix in self.blocks:
            self.resident[prefix] = state
            self._modules[prefix] = weakref.ref(module)

    def close_files(self) -> None:
        """Unmap the files read: a mapped page a read touched counts in the process's resident
        memory (RssFile) for as long as the mapping lives, so a model streamed through open
        mappings would look, and be accounted, as resident as one loaded whole."""
        self._files.clear()

    def release(self, module: nn.Module, prefix: str) -> None:
        """Drop the block's tensors back to the meta device (they stay readable from the index)."""
        for full in self._stored_names(module, prefix):
            local = full[len(prefix) + 1:]
            t = _get(module, local)
            if full in self.index and t.device.type != "meta":
                _set(module, local, torch.empty_like(t, device="meta"))
        # a quantized layer's packed kernel holds its own copy of the codes: kept, every block a
        # forward passed would stay resident through it (a 7B int4 model: 3 GB more by the end)
        _drop_kernels(module)
        self.resident.pop(prefix, None)
        self._modules.pop(prefix, None)
        from ..heap import release_free_heap
        release_free_heap()  # the block's freed tensors leave the heap, not just the module

    def commit(self, module: nn.Module, prefix: str) -> None:
        """Write the block's tensors as they are now (a stage rewrote them) to its spill file and
        point the index there; then release it."""
        from safetensors.torch import save_file
        state = {f"{prefix}.{k}": v.detach().contiguous() for k, v in module.state_dict().items()}
        for old in [n for n in self.index if n.startswith(prefix + ".") and n not in state]:
            del self.index[old]  # e.g. a weight that became a quantized layer's codes
        path = self.spill_dir() / f"{prefix}.safetensors"
        self.close_files()  # a block committed twice (two stages) is rewritten
        save_file(state, str(path))
        for name in state:
            self.index[name] = (str(path), name)
            self.spilled.add(name)
            self.transposed.discard(name)
        self.release(module, prefix)

    def spill_dir(self) -> Path:
        if self._spill_dir is None:
            root = self.spill_root
            if root is not None:
                root.mkdir(parents=True, exist_ok=True)
            self._spill_dir = Path(tempfile.mkdtemp(prefix="slimformer-spill-", dir=root))
            weakref.finalize(self, shutil.rmtree, str(self._spill_dir), True)
        return self._spill_dir

    # -- use by the engine and by plain forwards ---------------------------------------------
    @contextlib.contextmanager
    def hold(self, module: nn.Module, prefix: str, commit: bool = False):
        """The block resident for the duration; written to its spill file after if `commit`."""
        self.materialise(module, prefix, HELD)
        try:
            yield
        finally:
            if commit:
                self.commit(module, prefix)
            else:
                self.release(module, prefix)

    def release_passing(self) -> None:
        """Blocks (and the rest) a forward read and did not finish (an exception stopped it) leave memory."""
        for name, state in list(self.resident.items()):
            mod = self._modules[name]()
            if state == PASSING and mod is not None:
                self.release_rest(mod) if name == REST else self.release(mod, name)

    def install(self, root: nn.Module) -> None:
        """Stream every block through memory on its forward, and the rest (embeddings, final norm,
        head: 1.6 GB in fp32 for a 7B model with a 49k vocabulary) on the whole module's forward:
        a block-by-block stage reads the embeddings once, for the capture, and never the head."""
        for name in self.blocks:
            block = root.get_submodule(name)
            hook = _Stream(self, name)
            block.register_forward_pre_hook(hook.enter)
            block.register_forward_hook(hook.leave)
        hook = _Stream(self, REST)
        root.register_forward_pre_hook(hook.enter)
        root.register_forward_hook(hook.leave)

    def _rest_names(self, root: nn.Module) -> list[str]:
        return [n for n in root.state_dict(keep_vars=True) if not self._in_block(n)]

    def materialise_rest(self, root: nn.Module, state: str = HELD) -> None:
        """Read the tensors outside the blocks (a tied head is tied again to the embeddings read)."""
        for name, t in list(root.state_dict(keep_vars=True).items()):
            if t.device.type == "meta" and name in self.index and not self._in_block(name):
                _set(root, name, self.read(name))
        self.close_files()
        if hasattr(root, "tie_weights"):
            root.tie_weights()  # a tied head reads the embeddings just read
        self._drop_rest_kernels(root)  # a quantized head's packed kernel
        self.resident[REST] = state
        self._modules[REST] = weakref.ref(root)

    def release_rest(self, root: nn.Module) -> None:
        """The tensors outside the blocks back to the meta device (readable again from the index)."""
        for name in self._rest_names(root):
            t = _get(root, name)
            if name in self.index and t.device.type != "meta":
                _set(root, name, torch.empty_like(t, device="meta"))
        if hasattr(root, "tie_weights"):
            root.tie_weights()  # the head and the embeddings stay one (meta) tensor
        self._drop_rest_kernels(root)
        self.resident.pop(REST, None)
        self._modules.pop(REST, None)
        from ..heap import release_free_heap
        release_free_heap()

    @contextlib.contextmanager
    def hold_rest(self, root: nn.Module, commit: bool = False):
        """The tensors outside the blocks resident for the duration (written to the spill folder
        after if `commit`: a stage changed the head); left resident if they already were."""
        was = self.resident.get(REST)
        if was is None:
            self.materialise_rest(root, HELD)
        try:
            yield
        finally:
            if commit:
                self._commit_rest(root)
            if was is None or commit:
                self.release_rest(root)

    def _commit_rest(self, root: nn.Module) -> None:
        from safetensors.torch import save_file
        state, seen = {}, set()
        for name, t in root.state_dict(keep_vars=True).items():
            if self._in_block(name) or t is None or id(t) in seen:
                continue  # a tied head is the embeddings' tensor: stored once, tied again on reading
            seen.add(id(t))
            state[name] = t.detach().contiguous()
        for old in [n for n in self.index if not self._in_block(n) and n not in state]:
            del self.index[old]
        path = self.spill_dir() / "rest.safetensors"
        self.close_files()
        save_file(state, str(path))
        for name in state:
            self.index[name] = (str(path), name)
            self.spilled.add(name)
            self.transposed.discard(name)

    def load_all(self, root: nn.Module) -> None:
        """Every tensor resident for good (a stage that needs the whole model)."""
        if self.resident.get(REST) != HELD:
            self.materialise_rest(root, HELD)
        for name in self.blocks:
            self.materialise(root.get_submodule(name), name, HELD)

    def detach(self, root: nn.Module) -> None:
        """Remove the streaming hooks (after load_all, the module is an ordinary one)."""
        for module in [root, *(root.get_submodule(name) for name in self.blocks)]:
            for hooks in (module._forward_pre_hooks, module._forward_hooks):
                for key, fn in list(hooks.items()):
                    if isinstance(getattr(fn, "__self__", None), _Stream):
                        del hooks[key]

    def _drop_rest_kernels(self, root: nn.Module) -> None:
        for n, m in root.named_modules():
            if not self._in_block(f"{n}."):
                _drop_kernels(m, recurse=False)

    def _in_block(self, name: str) -> bool:
        return any(name.startswith(b + ".") for b in self.blocks)

    def resident_bytes(self, root: nn.Module) -> int:
        return sum(t.numel() * t.element_size() for t in root.state_dict(keep_vars=True).values()
                   if t.device.type != "meta")

    def __deepcopy__(self, memo):
        """A copy reads the same source files; what it commits goes to its own spill folder."""
        new = LazyWeights(self.index, self.dtype, self.blocks, self.transposed, self.spill_root)
        new.spilled = set(self.spilled)
        memo[id(self)] = new
        return new


class _Stream:
    """Forward hooks of one block (or of the whole module, for the rest): read it before its
    forward, drop it after, unless held."""

    def __init__(self, store: LazyWeights, name: str):
        self.store, self.name = store, name
        self.rest = name == REST

    def enter(self, module, args):
        if self.name not in self.store.resident:
            if self.rest:
                self.store.materialise_rest(module, PASSING)
            else:
                self.store.materialise(module, self.name, PASSING)

    def leave(self, module, args, output):
        if self.store.resident.get(self.name) == PASSING:
            if self.rest:
                self.store.release_rest(module)
            else:
                self.store.release(module, self.name)


def shared_rest_memo(module: nn.Module, store: LazyWeights) -> dict:
    """A deepcopy memo under which a copy shares the resident tensors outside the blocks (the
    embeddings and head of a 7B model are 1 GB in fp32) instead of duplicating them."""
    return {id(t): t for name, t in module.state_dict(keep_vars=True).items()
            if t.device.type != "meta" and not store._in_block(name)}


def unshare_rest(module: nn.Module, store: LazyWeights) -> None:
    """Give a copy its own tensors outside the blocks before a stage may change them in place."""
    seen: dict[int, torch.Tensor] = {}
    for name, t in list(module.state_dict(keep_vars=True).items()):
        if t.device.type == "meta" or store._in_block(name):
            continue
        if id(t) not in seen:
            seen[id(t)] = t.detach().clone()
        _set(module, name, seen[id(t)])


def _drop_kernels(module: nn.Module, recurse: bool = True) -> None:
    """Forget the packed kernels (and input-group stacks) built from a module's tensors."""
    for m in module.modules() if recurse else (module,):
        if hasattr(m, "_cache"):
            m._cache = {}
        if getattr(m, "_group", None) is not None:
            m._group.reset()


def _get(module: nn.Module, name: str) -> torch.Tensor:
    mod_name, _, leaf = name.rpartition(".")
    sub = module.get_submodule(mod_name) if mod_name else module
    return sub._parameters[leaf] if leaf in sub._parameters else sub._buffers[leaf]


def _set(module: nn.Module, name: str, t: torch.Tensor) -> None:
    mod_name, _, leaf = name.rpartition(".")
    sub = module.get_submodule(mod_name) if mod_name else module
    if leaf in sub._parameters:
        old = sub._parameters[leaf]
        sub._parameters[leaf] = nn.Parameter(t, requires_grad=old.requires_grad if old is not None else False)
    else:
        sub._buffers[leaf] = t
