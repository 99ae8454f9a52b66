"""slimformer tune on a tiny encoder: the front is non-dominated and within the budget (re-measured
here from each front recipe), a resumed tune continues its Optuna study, the search reads no
test split, and a budget nothing meets gives the closest point and says so."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from slimformer.compress import run_stages
from slimformer.data import data_root, read_pairs, resolve_data
from slimformer.evaluate.embed import encode
from slimformer.recipe import load_recipe
from slimformer.tune import TuneConfig, tune
from slimformer.tune import measure, search
from slimformer.tune.front import Point, dominates

pytestmark = pytest.mark.xdist_group("tune")  # one worker: they share the tiny model and the cores


@pytest.fixture(autouse=True)
def small_measures(monkeypatch):
    monkeypatch.setattr(measure, "PAIRS", 120)
    monkeypatch.setattr(measure, "BENCH_ITEMS", 64)


def _fidelity_by_hand(model, original, n: int) -> float:
    """Mean cosine of the embeddings of both sides of n STS-B dev pairs to the original's."""
    pairs = read_pairs(resolve_data("stsb", "dev"))
    pairs = pairs[::-(-len(pairs) // n)]  # evenly spaced, as the judge samples them
    texts = [p.a for p in pairs] + [p.b for p in pairs]
    a, b = encode(model, texts), encode(original, texts)
    return float((torch.nn.functional.normalize(a, dim=-1) * torch.nn.functional.normalize(b, dim=-1)).sum(-1).mean())


def test_front_is_within_budget_non_dominated_and_a_resumed_tune_continues(tiny, tmp_path):
    model = tiny["bert"]
    cfg = TuneConfig(min_fidelity=0.995, runtime="torch", budget_s=900, trials=4, finalists=1, recover_steps=2)
    r = tune(model, cfg, tmp_path / "t", progress=False)
    pts = {p["id"]: Point.from_dict(p) for p in r.points}
    assert r.trials["one-shot"] == 4 and r.front and r.chosen in r.front and r.within_budget
    for pid in r.front:  # each front recipe, re-run and re-measured here, meets the budget
        recipe = load_recipe(tmp_path / "t" / "front" / f"{pid}.yaml")
        compressed, _ = run_stages(model, recipe, progress=False)
        fid = _fidelity_by_hand(compressed, model, measure.PAIRS)
        assert fid >= cfg.min_fidelity and fid == pytest.approx(pts[pid].quality["fidelity"], abs=2e-3), pid
    front = [pts[i] for i in r.front]
    within = [p for p in pts.values() if p.ok]
    assert not any(dominates(q, p) for p in front for q in within)  # non-dominated among the choices
    assert all(any(dominates(f, p) or f is p for f in front) for p in within)  # and it covers them
    assert pts[r.chosen].speed == max(p.speed for p in within)
    report = (tmp_path / "t" / "report.md").read_text()
    assert all(f"front/{pid}.yaml" in report for pid in r.front) and f"| **{r.chosen}** |" in report
    assert (tmp_path / "t" / "pareto.png").stat().st_size > 1000
    assert (tmp_path / "t" / "chosen" / "model" / "config.json").is_file()

    first = [(p["id"], p["params"]) for p in r.points if p["phase"] == "one-shot"]
    import optuna  # a trial an interrupted run left RUNNING is measured again by the resumed one
    study = optuna.load_study(study_name="one-shot", storage=f"sqlite:///{tmp_path / 't' / 'study.db'}")
    left = {"heads": 2, "ffn": 0.5, "layers": 0, "quant": "none"}
    study.enqueue_trial(left)
    from slimformer.tune.space import choices, propose
    assert propose(study.ask(), choices(model, "torch")) == left  # asked, never told: RUNNING
    r2 = tune(model, TuneConfig(**{**cfg.__dict__, "trials": 6}), tmp_path / "t", progress=False)
    again = [(p["id"], p["params"]) for p in r2.points if p["phase"] == "one-shot"]
    assert r2.trials["one-shot"] == 6 and again[:4] == first  # the same history, continued
    assert left in [p for _, p in again[4:]]
    saved = json.loads((tmp_path / "t" / "results.json").read_text())
    assert len([p for p in saved["points"] if p["phase"] == "one-shot"]) == 6


def test_search_reads_no_test_split(tiny, tmp_path, monkeypatch):
    """The search runs on a copy of the data without its test files; only the final report (the
    chosen model, once) gets them back."""
    root = tmp_path / "data"
    shutil.copytree(data_root(), root)
    for f in ("stsb/test.tsv", "wikitext2/wiki.test.raw"):
        (root / f).unlink()
    monkeypatch.setenv("SLIMFORMER_DATA", str(root))
    real_finish, calls = search.finish, []

    def finish(*args, **kw):
        calls.append(1)
        monkeypatch.delenv("SLIMFORMER_DATA")  # the test split, for the chosen model only
        return real_finish(*args, **kw)

    monkeypatch.setattr(search, "finish", finish)
    r = tune(tiny["bert"], TuneConfig(max_drop=5.0, runtime="torch", budget_s=600, trials=3, finalists=0),
             tmp_path / "t", progress=False)
    assert calls == [1] and r.trials == {"one-shot": 3, "failed": 0, "recovered": 0}
    assert "original" in r.test and r.test["metric"] == "spearman_x100"


def test_budget_nothing_meets_gives_the_closest_point_and_says_so(tiny, tmp_path):
    # served from OpenVINO: each point exported to IR and timed there, the chosen one written as IR
    cfg = TuneConfig(min_fidelity=1.0, runtime="openvino", budget_s=600, trials=3, finalists=0)
    r = tune(tiny["bert"], cfg, tmp_path / "t", progress=False)
    assert not r.within_budget and r.front == [] and r.chosen is not None
    assert r.runtime == "openvino" and (tmp_path / "t" / "chosen" / "openvino" / "model.xml").is_file()
    assert any(n.startswith("NO POINT MEETS THE BUDGET") for n in r.notes)
    closest = min(r.points, key=lambda p: p["quality"]["shortfall"])
    assert r.chosen == closest["id"]
    assert "NO POINT MEETS THE BUDGET" in (tmp_path / "t" / "report.md").read_text()


def test_bad_budgets_are_one_line_errors(tmp_path, capsys):
    from slimformer.cli import main
    assert main(["tune", "minilm", "--out", str(tmp_path / "x")]) == 2
    assert "needs a quality budget" in capsys.readouterr().err
    assert main(["tune", "minilm", "--max-ppl-ratio", "1.2", "--out", str(tmp_path / "x")]) == 2
    assert main(["tune", "minilm", "--max-drop", "1", "--budget", "soon", "--out", str(tmp_path / "x")]) == 2
    assert "not understood" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_causal_tune_judges_validation_perplexity(tiny, tmp_path, monkeypatch):
    """A GQA decoder: KV groups in the space, perplexity on validation windows against the budget."""
    monkeypatch.setattr(measure, "WINDOWS", 2)
    monkeypatch.setattr(measure, "WINDOW_LEN", 64)
    model = tiny["llama"]
    cfg = TuneConfig(max_ppl_ratio=1.5, objective="throughput", runtime="torch", budget_s=600, trials=2, finalists=0)
    r = tune(model, cfg, tmp_path / "t", progress=False)
    assert r.trials["one-shot"] == 2 and r.test["metric"] == "perplexity"
    from slimformer import evaluate
    for p in r.points:
        assert "heads" not in p["params"] and set(p["params"]) == {"kv_heads", "ffn", "layers", "quant"}
        assert p["quality"]["ok"] == (p["quality"]["score"] <= 1.5 * r.baseline["quality"])
    base = evaluate(model, "ppl", split="validation", seq_len=64, max_windows=2, progress=False).value
    assert r.baseline["quality"] == pytest.approx(base)
