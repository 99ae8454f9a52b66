"""Points of a tune and their Pareto front (quality against speed, both higher better)."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Point:
    id: str  # "t12" (one-shot trial 12) or "r12" (trial 12 recovered)
    params: dict
    recipe: dict
    quality: dict  # Quality.to_dict(): score, fidelity, ok, shortfall
    speed: float  # ratio to the original, same process
    key: float  # the quality as one number, higher better
    phase: str  # "one-shot" | "recovered"
    wall_s: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return bool(self.quality["ok"])

    def to_dict(self) -> dict:
        return {"id": self.id, "params": self.params, "recipe": self.recipe, "quality": self.quality,
                "speed": self.speed, "key": self.key, "phase": self.phase, "wall_s": self.wall_s,
                "extra": self.extra}

    @classmethod
    def from_dict(cls, d: dict) -> Point:
        return cls(**d)


def dominates(a: Point, b: Point) -> bool:
    return a.key >= b.key and a.speed >= b.speed and (a.key > b.key or a.speed > b.speed)


def pareto(points: list[Point]) -> list[Point]:
    """The non-dominated points, fastest first."""
    front = [p for p in points if not any(dominates(q, p) for q in points if q is not p)]
    return sorted(front, key=lambda p: -p.speed)


def choose(points: list[Point]) -> tuple[Point | None, bool]:
    """The fastest point within the budget; if none is, the one closest to it (then False)."""
    ok = [p for p in points if p.ok]
    if ok:
        return max(ok, key=lambda p: (p.speed, p.key)), True
    if not points:
        return None, False
    return min(points, key=lambda p: (p.quality["shortfall"], -p.speed)), False
