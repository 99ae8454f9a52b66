"""The stage registry: compression stages register here by name with their config dataclass.

A stage is a function (model, config, context) -> (model, log dict). The recipe runner finds
stages only through this registry, so an unknown name is an error listing the known ones.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

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


StageFn = Callable[[Model, object, StageContext], "tuple[Model, dict]"]


@dataclass(frozen=True)
class StageSpec:
    name: str
    config_cls: type
    run: StageFn
    doc: str = ""


STAGES: dict[str, StageSpec] = {}


def register_stage(name: str, config_cls: type, doc: str = ""):
    def deco(fn: StageFn) -> StageFn:
        STAGES[name] = StageSpec(name, config_cls, fn, doc)
        return fn
    return deco


def known_stages() -> str:
    return ", ".join(sorted(STAGES)) or "none yet (this version registers no compression stage)"
