"""The stage registry: compression stages register here by name with their config dataclass.

A stage is a function (model, config, context) -> (model, StageLog). The recipe runner finds
stages only through this registry, so an unknown name is an error listing the known ones. Each
built-in stage returns its own StageLog subclass (TrimLog, PruneLog, QuantizeLog, RecoverLog);
compress and the report read its attributes, and results.json / slimformer.json hold its
to_dict(). A stage registered from outside may return a plain dict: the runner wraps it in a
PluginLog.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, ClassVar

from .model import Model


@dataclass
class StageContext:
    """What a stage may need besides the model: the untouched original, and the calibration settings."""
    original: Model
    calibration: object  # CalibrationConfig (recipe.py)
    progress: bool = True
    work_dir: object = None  # Path for a stage's scratch files (recover's checkpoints), or None
    resume: bool = False  # continue an interrupted stage from its checkpoint in work_dir

    def calibration_kwargs(self) -> dict | None:
        """The recipe's calibration settings as keyword arguments of `calibration_set`."""
        import dataclasses
        return dataclasses.asdict(self.calibration) if self.calibration is not None else None


@dataclass(kw_only=True)
class StageLog:
    """What one stage did. The runner fills `stage`, `wall_s` and `peak_rss_bytes`; a subclass adds
    the stage's own fields. Fields named in DETAIL are per-layer / per-block detail: they go to
    results.json in full, and the report summarises them instead of printing them."""
    stage: str = ""
    calibration: dict | None = None  # CalibrationSet.describe(), when the stage read calibration data
    wall_s: float = 0.0
    peak_rss_bytes: int = 0
    # a lazily loaded model: "one block at a time", or "whole model" (a stage that cannot stream)
    memory: str | None = None

    DETAIL: ClassVar[tuple[str, ...]] = ()
    BASE: ClassVar[tuple[str, ...]] = ("stage", "calibration", "wall_s", "peak_rss_bytes", "memory")

    def own_fields(self) -> list[tuple[str, object]]:
        """The subclass's fields, in declaration order, with None (not applicable) left out."""
        return [(f.name, getattr(self, f.name)) for f in dataclasses.fields(self)
                if f.name not in self.BASE and getattr(self, f.name) is not None]

    def settings(self) -> list[tuple[str, object]]:
        """(name, value) of what the report shows as the stage's settings table."""
        return [(k, v) for k, v in self.own_fields() if k not in self.DETAIL]

    def detail(self) -> dict[str, object]:
        """The per-layer / per-block fields that are set."""
        return {k: v for k, v in self.own_fields() if k in self.DETAIL}

    def to_dict(self) -> dict:
        """A JSON-able dict (results.json, slimformer.json): stage first, fields, then the costs."""
        out: dict = {"stage": self.stage}
        if self.calibration is not None:
            out["calibration"] = dict(self.calibration)
        out.update({k: _plain(v) for k, v in self.own_fields()})
        out.update(wall_s=self.wall_s, peak_rss_bytes=self.peak_rss_bytes)
        if self.memory is not None:
            out["memory"] = self.memory
        return out


@dataclass(kw_only=True)
class PluginLog(StageLog):
    """The log of a stage registered from outside that returned a plain dict."""
    values: dict = field(default_factory=dict)

    def own_fields(self) -> list[tuple[str, object]]:
        return [(k, v) for k, v in self.values.items() if v is not None and k not in self.BASE]


def _plain(v):
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return dataclasses.asdict(v)
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def as_stage_log(name: str, log) -> StageLog:
    """A stage's return value as a StageLog named `name` (a plain dict becomes a PluginLog)."""
    if isinstance(log, StageLog):
        log.stage = name
        return log
    if isinstance(log, dict):
        values = dict(log)
        return PluginLog(stage=name, calibration=values.pop("calibration", None), values=values)
    raise TypeError(f"stage {name!r} returned a {type(log).__name__} as its log; return a StageLog (or a dict)")


StageFn = Callable[[Model, object, StageContext], "tuple[Model, StageLog]"]


@dataclass(frozen=True)
class StageSpec:
    name: str
    config_cls: type
    run: StageFn
    doc: str = ""
    streams: bool = False  # works block by block through the engine (a lazily loaded model stays lazy)


STAGES: dict[str, StageSpec] = {}


def register_stage(name: str, config_cls: type, doc: str = "", streams: bool = False):
    def deco(fn: StageFn) -> StageFn:
        STAGES[name] = StageSpec(name, config_cls, fn, doc, streams)
        return fn
    return deco


def known_stages() -> str:
    return ", ".join(sorted(STAGES)) or "none yet (this version registers no compression stage)"
