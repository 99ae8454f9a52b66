"""The registry of compressed module types.

A compressed module type is a torch Module class registered here under a name, which provides:
- `describe() -> dict`: the JSON-able facts needed to rebuild it (shapes, format, kernel);
- `from_description(desc)` (classmethod): an empty module of exactly that form, whose
  `load_state_dict` then restores the stored tensors (its state is its state_dict);
- `to_onnx(graph, x, name, lower)`: its lowering into an ONNX graph (`lower(graph, x, module,
  name)` lowers a child linear), using only the graph's `op` / `const` calls and its `counts`
  (linears written, by form, for the export's log).
What is not registered yet: QAT (recover/qat.py) and the GGUF writer (export/gguf.py) still know
QuantLinear by its class.
Save writes `describe_modules(root)` into slimformer.json; load calls `build_modules` before
loading the weights. A new module type is one file with its class and a `@register_module`.
"""
from __future__ import annotations

from torch import nn

MODULE_TYPES: dict[str, type] = {}


def register_module(kind: str):
    def deco(cls: type) -> type:
        for attr in ("describe", "from_description", "to_onnx"):
            if not hasattr(cls, attr):
                raise TypeError(f"compressed module {cls.__name__} lacks {attr}()")
        cls.kind = kind
        MODULE_TYPES[kind] = cls
        return cls
    return deco


def is_compressed(module: nn.Module) -> bool:
    return type(module) in MODULE_TYPES.values()


def compressed_modules(root: nn.Module) -> dict[str, nn.Module]:
    """{name: module} of every compressed module in `root`, outermost first."""
    return {n: m for n, m in root.named_modules() if is_compressed(m)}


def describe_modules(root: nn.Module) -> dict[str, dict]:
    return {n: {"type": m.kind, **m.describe()} for n, m in compressed_modules(root).items()}


def build_modules(root: nn.Module, described: dict[str, dict]) -> None:
    """Replace each named submodule of `root` by an empty compressed module of the described form
    (outer modules first, so that a module nested in another lands in the rebuilt parent)."""
    for name in sorted(described, key=lambda n: n.count(".")):
        desc = described[name]
        cls = MODULE_TYPES.get(desc.get("type"))
        if cls is None:
            raise ValueError(f"{name}: unknown compressed module type {desc.get('type')!r} "
                             f"(known: {', '.join(sorted(MODULE_TYPES))}); upgrade slimformer")
        parent, _, child = name.rpartition(".")
        setattr(root.get_submodule(parent) if parent else root, child, cls.from_description(desc))
