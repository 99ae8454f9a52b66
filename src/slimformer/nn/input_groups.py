"""Quantized linears that read the same input (q/k/v, gate/up) run as one integer GEMM.

Why: with dynamic activations each linear quantizes its input itself, so q, k and v quantize one
tensor three times and call three small GEMMs (three kernel dispatches per layer and token when
decoding). Linked into a group, the first member called runs one kernel over the members'
stacked codes and every member returns its own columns of that output. Output columns of an
integer GEMM are independent, so the result equals the separate layers' (tested).

The stored layers stay separate (codes, scales, saving, export unchanged): a group is a runtime
object, linked after quantizing, loading or QAT, and never saved.
"""
from __future__ import annotations

import torch

from .quant_linear import QuantLinear

FUSIBLE = ("int8_dynamic", "int8_static", "int8_weight", "int4_weight")


class InputGroup:
    """Members' outputs from one fused kernel call; reused only for the very same input tensor."""

    def __init__(self, members: list[QuantLinear]):
        self.members = members
        bounds = [0]
        for m in members:
            bounds.append(bounds[-1] + m.out_features)
        self.bounds = bounds
        self.reset()

    def reset(self) -> None:
        self._fused = None  # the stacked QuantLinear (built on first use)
        self._x = self._y = None
        self._version = -1
        self._pending: set[int] = set()

    def __getstate__(self):  # copies keep the members only: own kernels, no cached activations
        return {"members": self.members, "bounds": self.bounds}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.reset()

    def _stacked(self) -> QuantLinear:
        if self._fused is None:
            ms, first = self.members, self.members[0]
            bias = None
            if any(m.bias is not None for m in ms):
                bias = torch.cat([m.bias if m.bias is not None else torch.zeros(m.out_features) for m in ms])
            self._fused = QuantLinear.from_codes(
                torch.cat([m.codes() for m in ms]), torch.cat([m.scales for m in ms]),
                torch.cat([m.zeros for m in ms]), first.spec, bias, first.act, first.kernel,
                first.input_scale, float(first.act_scale) if first.act_scale is not None else None,
                first.granularity, float(first.act_zero) if first.act_zero is not None else None)
        return self._fused

    def output(self, index: int, x: torch.Tensor) -> torch.Tensor:
        version = _version(x)
        reuse = (self._y is not None and x is self._x and version == self._version
                 and index in self._pending)
        if not reuse:
            self._y = self._stacked()(x)
            self._x, self._version = x, version
            self._pending = set(range(len(self.members)))
        y = self._y[..., self.bounds[index]:self.bounds[index + 1]]
        self._pending.discard(index)
        if not self._pending:  # every member has its columns: hold no activations between calls
            self._x = self._y = None
        return y


def _version(x: torch.Tensor) -> int:
    """In-place writes bump a tensor's version. Inference-mode tensors keep no counter; there the
    identity of the tensor object alone decides (the group holds it, so its id is not reused)."""
    return -2 if x.is_inference() else x._version


def _same_format(ms: list[QuantLinear]) -> bool:
    a = ms[0]

    def same(t, u):
        if t is None or u is None:
            return t is None and u is None
        if t.is_meta or u.is_meta:  # a lazily loaded block on disk: values unknown, so not fused
            return False
        return torch.equal(t, u)
    return all(m.kernel == a.kernel and m.spec == a.spec and m.act == a.act and m.granularity == a.granularity
               and m.in_features == a.in_features and same(m.input_scale, a.input_scale)
               and same(m.act_scale, a.act_scale) and same(m.act_zero, a.act_zero) for m in ms)


def link_input_groups(root, groups: list[list[str]]) -> int:
    """Link the quantized linears of `root` that share an input (each of `groups` names the linears
    reading one input: q/k/v, gate/up); returns how many groups. Members must share format, kernel,
    smoothing and activation scale; others run alone."""
    n = 0
    for names in groups:
        ms = [root.get_submodule(name) for name in names]
        for m in ms:
            if isinstance(m, QuantLinear):
                m.unlink()
        if len(ms) < 2 or not all(isinstance(m, QuantLinear) and m.kernel in FUSIBLE for m in ms):
            continue
        if not _same_format(ms):
            continue
        group = InputGroup(ms)
        for i, m in enumerate(ms):
            m.link(group, i)
        n += 1
    return n
