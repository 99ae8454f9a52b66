"""slimformer tune: the fastest model within a quality budget, in the runtime it will be served from.

Multi-fidelity, so a search fits a wall-time budget:
1. one-shot points (trim + quantize, no retraining), proposed by Optuna's multi-objective TPE
   sampler (quality on validation data, speed measured in the target runtime), kept in an SQLite
   study in the output folder so an interrupted tune resumes with the same trial history;
2. the finalists: one-shot front points faster than anything already within the budget, the
   least damaged first, recovered (distilled from the original) in their share of the budget and
   measured again;
3. the chosen point (the fastest within the budget on validation data; if none is, the closest)
   is evaluated once on the test split, benchmarked, exported and reported by compress's `finish`.
The search never reads a test split: quality is judged on dev / validation data (measure.py), and
benchmarks read validation text.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..atomic import atomic_file
from ..compress import finish, run_stages
from ..errors import ConfigValueError, MissingDependencyError, SlimformerError
from ..model import Model
from ..recipe import parse_recipe
from ..results import _Serialisable
from .config import TuneConfig
from .front import Point, choose, pareto
from .measure import Judge
from .space import choices, describe, is_identity, propose, recipe_for, recover_stage

STATE = "tune-state.json"  # spent time and recovered finalists, beside the Optuna study
STUDY = "study.db"


@dataclass
class TuneResult(_Serialisable):
    model: str
    config: dict
    runtime: str
    objective: str
    baseline: dict  # {"quality", "fidelity", "speed": objective figure, "runtime"}
    points: list[dict]  # every evaluated point (Point.to_dict), one-shot and recovered
    front: list[str]  # ids of the non-dominated points within the budget, fastest first
    chosen: str | None
    within_budget: bool  # the chosen point meets the budget on validation data
    test: dict = field(default_factory=dict)  # the chosen model on the test split vs the original's
    notes: list[str] = field(default_factory=list)
    trials: dict = field(default_factory=dict)  # {"one-shot", "failed", "recovered"}
    wall_s: float = 0.0
    out: str | None = None


def resolve_runtime(model: Model, runtime: str) -> str:
    if runtime != "auto":
        if model.is_causal and runtime == "openvino":
            raise ConfigValueError("the OpenVINO export writes sentence encoders; tune a causal LM for "
                                   "--runtime llama.cpp or torch")
        if model.is_causal and runtime == "onnxruntime":
            raise ConfigValueError("tune serves causal LMs from torch or llama.cpp (the ONNX decoder graph has "
                                   "no KV cache to decode with); pass --runtime llama.cpp or torch")
        if not model.is_causal and runtime == "llama.cpp":
            raise ConfigValueError("llama.cpp runs causal LMs; a sentence encoder tunes for onnxruntime, "
                                   "openvino or torch")
        return runtime
    want = "llama.cpp" if model.is_causal else "onnxruntime"
    module = "llama_cpp" if model.is_causal else "onnxruntime"
    try:
        __import__(module)
        return want
    except ImportError:
        return "torch"


class _Clock:
    """Wall time of this tune, counting what earlier (interrupted) runs of it already spent."""

    def __init__(self, budget_s: float, spent_before: float):
        self.budget, self.before, self.t0 = budget_s, spent_before, time.perf_counter()

    @property
    def spent(self) -> float:
        return self.before + time.perf_counter() - self.t0

    @property
    def left(self) -> float:
        return self.budget - self.spent


def _say(clock: _Clock, text: str, progress: bool) -> None:
    if progress:
        print(f"[tune {clock.spent / 60:5.1f} / {clock.budget / 60:.0f} min] {text}", file=sys.stderr, flush=True)


def _load_state(out: Path) -> dict:
    path = out / STATE
    return json.loads(path.read_text()) if path.is_file() else {"spent_s": 0.0, "recovered": {}}


def _save_state(out: Path, state: dict) -> None:
    with atomic_file(out / STATE, overwrite=True) as tmp:
        tmp.write_text(json.dumps(state, indent=2))


def _optuna():
    try:
        import optuna
    except ImportError:
        raise MissingDependencyError("slimformer tune needs Optuna: pip install optuna") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def _line(judge: Judge, p: Point) -> str:
    q = p.quality
    if judge.causal:
        qual = f"ppl {q['score']:.2f} ({q['score'] / judge.base_quality[0]:.3f}x)"
    else:
        qual = f"dev {q['score']:.2f} ({q['score'] - judge.base_quality[0]:+.2f})"
    if q.get("fidelity") is not None:
        qual += f", fidelity {q['fidelity']:.3f}"
    return f"{p.id} {describe(p.params)} [{p.phase}]: {qual}, {p.speed:.2f}x{'' if p.ok else ' (outside budget)'}"


def _measure(model: Model, judge: Judge, recipe: dict):
    compressed, logs = run_stages(model, parse_recipe(recipe, where="tune"), progress=False)
    return compressed, logs, judge.quality(compressed), judge.speed_ratio(compressed)


def _search(model, judge, cfg, space, study, clock, stop_at, progress) -> list[Point]:
    optuna = _optuna()
    points = [Point.from_dict(t.user_attrs["point"]) for t in study.trials
              if t.state == optuna.trial.TrialState.COMPLETE and "point" in t.user_attrs]
    seen = {json.dumps(p.params, sort_keys=True): p for p in points}
    for t in study.trials:  # a point an interrupted run was measuring: failed (counted so), measured again now
        if t.state == optuna.trial.TrialState.RUNNING:
            study.tell(t.number, state=optuna.trial.TrialState.FAIL)
            study.enqueue_trial(t.params)
    if not study.trials:  # the quantization-only points first: the front's cheap end, always measured
        for quant in space["quant"]:
            if quant != "none":
                study.enqueue_trial({k: (quant if k == "quant" else v[0]) for k, v in space.items()})
    repeats = 0
    while clock.spent < stop_at and (cfg.trials is None or len(points) < cfg.trials):
        trial = study.ask()
        params = propose(trial, space)
        key = json.dumps(params, sort_keys=True)
        if is_identity(params):  # the original itself: the baseline, not a candidate
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            repeats += 1
            if repeats > 20:
                break
            continue
        if key in seen:  # the sampler came back to a measured point: same values, no new work
            study.tell(trial, [seen[key].key, seen[key].speed])
            repeats += 1
            if repeats > 20:
                _say(clock, "the sampler keeps proposing measured points: the space is covered", progress)
                break
            continue
        repeats = 0
        t0 = time.perf_counter()
        recipe = recipe_for(params, model, judge.runtime, cfg.threads)
        try:
            _, _, q, speed = _measure(model, judge, recipe)
        except SlimformerError as e:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            _say(clock, f"t{trial.number} {describe(params)}: not measurable ({e})", progress)
            continue
        p = Point(id=f"t{trial.number}", params=params, recipe=recipe, quality=q.to_dict(), speed=speed,
                  key=judge.quality_key(q), phase="one-shot", wall_s=time.perf_counter() - t0)
        trial.set_user_attr("point", p.to_dict())
        study.tell(trial, [p.key, p.speed])
        points.append(p)
        seen[key] = p
        best, ok = choose(points)
        _say(clock, f"{_line(judge, p)} | best within budget: "
             f"{f'{best.id} {best.speed:.2f}x' if ok else 'none yet'}", progress)
    return points


def _finalists(points: list[Point], n: int) -> list[Point]:
    """One-shot front points that could beat the fastest point already within the budget (only
    they can move the answer), the least damaged first; a point with nothing trimmed has nothing
    for distillation to repair."""
    bar = max((p.speed for p in points if p.ok), default=0.0)
    front = [p for p in pareto(points) if p.speed > bar and any(p.params.get(k) for k in
                                                                 ("heads", "kv_heads", "ffn", "layers"))]
    return sorted(front, key=lambda p: -p.key)[:n]


def _recover(model, judge, cfg, finalists, state, clock, stop_at, out, progress, logs_by_id) -> list[Point]:
    done = []
    todo = [f for f in finalists if f"r{f.id[1:]}" not in state["recovered"]]
    done += [Point.from_dict(state["recovered"][f"r{f.id[1:]}"]) for f in finalists
             if f"r{f.id[1:]}" in state["recovered"]]
    for i, f in enumerate(todo):
        minutes = (stop_at - clock.spent) / (len(todo) - i) / 60
        if minutes < 0.5:
            _say(clock, f"no time left to recover {f.id}", progress)
            break
        rid = f"r{f.id[1:]}"
        # the training share of a finalist's time (trim, evaluation and the bench take the rest)
        rec = recover_stage(judge.causal, cfg.recover_steps, minutes * 0.75)
        recipe = recipe_for(f.params, model, judge.runtime, cfg.threads, recover=rec)
        t0 = time.perf_counter()
        _say(clock, f"recovering {f.id} ({describe(f.params)}) for up to {rec['max_minutes']:.1f} min", progress)
        try:
            compressed, logs, q, speed = _measure(model, judge, recipe)
        except SlimformerError as e:
            _say(clock, f"{rid}: recovery failed ({e})", progress)
            continue
        log = next(lg for lg in logs if lg.stage == "recover")
        # the recipe that re-runs it: the steps it did, not the time it had
        recipe["stages"] = [{"recover": {**rec, "steps": max(log.steps, 1), "max_minutes": None}}
                            if "recover" in s else s for s in recipe["stages"]]
        p = Point(id=rid, params=f.params, recipe=recipe, quality=q.to_dict(), speed=speed,
                  key=judge.quality_key(q), phase="recovered", wall_s=time.perf_counter() - t0,
                  extra={"steps": log.steps, "tokens": log.tokens, "train_s": round(log.train_wall_s, 1),
                         "heldout": {"metric": log.metric, "before": log.before, "after": log.after}})
        from ..model.save import save
        save(compressed, out / "finalists" / rid, overwrite=True)
        logs_by_id[rid] = logs
        state["recovered"][rid] = p.to_dict()
        state["spent_s"] = clock.spent
        _save_state(out, state)
        done.append(p)
        _say(clock, _line(judge, p), progress)
    return done


def _test_check(judge: Judge, cfg: TuneConfig, result) -> dict:
    """The chosen model against the budget on the test split (read only here, once)."""
    orig, comp = result.quality["original"]["value"], result.quality["compressed"]["value"]
    out = {"original": orig, "compressed": comp, "metric": result.quality["original"]["metric"]}
    fails = []
    if cfg.max_drop is not None:
        out["drop"] = orig - comp
        if out["drop"] > cfg.max_drop:
            fails.append(f"drop {out['drop']:.2f} > {cfg.max_drop}")
    if cfg.max_ppl_ratio is not None:
        out["ratio"] = comp / orig
        if out["ratio"] > cfg.max_ppl_ratio:
            fails.append(f"perplexity ratio {out['ratio']:.3f} > {cfg.max_ppl_ratio}")
    if cfg.min_fidelity is not None and result.fidelity:
        out["fidelity"] = result.fidelity["value"]
        if out["fidelity"] < cfg.min_fidelity:
            fails.append(f"fidelity {out['fidelity']:.3f} < {cfg.min_fidelity}")
    out["meets_budget"] = not fails
    out["misses"] = fails
    return out


def tune(model: Model, cfg: TuneConfig, out: str | Path, progress: bool = True) -> TuneResult:
    cfg.validate(model.is_causal)
    out = Path(out)
    if out.exists() and not (out / STUDY).is_file() and any(out.iterdir()):
        raise ConfigValueError(f"{out} exists and holds no tune; choose another --out (an interrupted tune's "
                               "folder resumes)")
    optuna = _optuna()
    runtime = resolve_runtime(model, cfg.runtime)
    out.mkdir(parents=True, exist_ok=True)
    state = _load_state(out)
    clock = _Clock(cfg.budget_s, state["spent_s"])
    judge = Judge(model, cfg, runtime)
    base_q, base_f = judge.base_quality
    _say(clock, f"{model.name} in {runtime}, objective {cfg.objective} at {cfg.threads} thread(s): original "
         f"{'ppl' if judge.causal else 'dev'} {base_q:.2f}, speed {judge.base_speed:.4g} "
         f"({judge._base_runtime()})", progress)
    space = choices(model, runtime)
    sampler = optuna.samplers.TPESampler(seed=cfg.seed, multivariate=True, n_startup_trials=6)
    study = optuna.create_study(study_name="one-shot", storage=f"sqlite:///{out / STUDY}", load_if_exists=True,
                                directions=["maximize", "maximize"], sampler=sampler)
    reserve = max(60.0, 0.1 * cfg.budget_s)  # the chosen model's test evaluation, bench and export
    one_shot_end = (cfg.budget_s - reserve) * (1 - cfg.recover_share) if cfg.finalists else cfg.budget_s - reserve
    points = _search(model, judge, cfg, space, study, clock, one_shot_end, progress)
    state["spent_s"] = clock.spent
    _save_state(out, state)
    finalists = _finalists(points, cfg.finalists)
    logs_by_id: dict = {}
    recovered = _recover(model, judge, cfg, finalists, state, clock, cfg.budget_s - reserve, out, progress,
                         logs_by_id)
    every = points + recovered
    best, ok = choose(every)
    notes = []
    if best is None:
        raise ConfigValueError("no point could be measured (every trial failed); see the messages above")
    if not ok:
        notes.append(f"NO POINT MEETS THE BUDGET on validation data: the closest, {best.id} "
                     f"({describe(best.params)}), misses it by {best.quality['shortfall']:.2f} budget units; "
                     "it is the model written, marked as outside the budget.")
    _say(clock, f"chosen: {_line(judge, best)}; test split and report", progress)
    if best.phase == "recovered":
        from ..model import load
        compressed = load(out / "finalists" / best.id)
        logs = logs_by_id.get(best.id)  # None when recovered by an earlier, interrupted run
    else:
        compressed, logs = run_stages(model, parse_recipe(best.recipe, where="tune"), progress=False)
    recipe = parse_recipe(best.recipe, where="tune")
    result = finish(model, compressed, logs if logs is not None else _logs_of(compressed), recipe,
                    out=out / "chosen", overwrite=True, progress=False)
    test = _test_check(judge, cfg, result)
    if not test["meets_budget"]:
        notes.append("The chosen point does NOT meet the budget on the test split: " + "; ".join(test["misses"]))
    front = pareto([p for p in every if p.ok])  # the choices a user has within the budget
    res = TuneResult(
        model=model.name, config=cfg.__dict__.copy(), runtime=runtime, objective=cfg.objective,
        baseline={"quality": base_q, "fidelity": base_f, "speed": judge.base_speed, "runtime": judge._base_runtime()},
        points=[p.to_dict() for p in every], front=[p.id for p in front], chosen=best.id, within_budget=ok,
        test=test, notes=notes + result.notes,
        trials={"one-shot": len(points), "failed": sum(t.state == optuna.trial.TrialState.FAIL for t in study.trials),
                "recovered": len(recovered)},
        wall_s=clock.spent, out=str(out))
    from .report import write_tune_report
    write_tune_report(res, out)
    state["spent_s"] = clock.spent
    _save_state(out, state)
    return res


def _logs_of(model: Model) -> list:
    """A finalist recovered by an earlier run: its stage logs as saved in its slimformer.json
    (plain records; the report lists them without the recovery curve)."""
    from ..stages import as_stage_log
    return [as_stage_log(str(d.get("stage", "stage")), dict(d)) for d in model.log]
