"""The recover stage: distillation losses against their formulas, schedules, masks kept at every
step, QAT round trip, gradual pruning, LoRA, checkpoints (best, early stop, NaN, resume after a
kill) and two gloo processes matching one."""
from __future__ import annotations

import copy
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch.optim.optimizer import register_optimizer_step_post_hook

from slimformer.data import bundled_path
from slimformer.errors import ConfigValueError, RecipeError, SlimformerError
from slimformer.prune.stage import PruneConfig, prune_model
from slimformer.nn.quant_linear import QuantLinear
from slimformer.quant.stage import QuantizeConfig, quantize_model
from slimformer.recipe import parse_recipe
from slimformer.recover import RecoverConfig, recover
from slimformer.recover.data import build_train_set
from slimformer.recover.losses import LossWeights, causal_losses, encoder_losses
from slimformer.recover.qat import FakeQuantLinear, fake_quant_weight, to_fake
from slimformer.recover.schedule import cubic_sparsity, lr_factor, pruning_steps
from slimformer.recover.trainer import Evaluation, TrainingDiverged, TrainPlan, train
from slimformer.trim import TrimConfig, trim_model

WORKER = Path(__file__).with_name("recover_worker.py")


def quick(**kw) -> RecoverConfig:
    base = dict(steps=6, batch_size=4, seq_len=32, holdout=2, lr=1e-3, eval_every=3, eval="heldout",
                data=["wikitext2:validation"])
    base.update(kw)
    return RecoverConfig(**base)


# ---- losses, from their formulas ---------------------------------------------------------------

def test_causal_kl_matches_formula():
    torch.manual_seed(0)
    s, t = torch.randn(2, 5, 11), torch.randn(2, 5, 11)
    batch = {"input_ids": torch.randint(0, 11, (2, 5))}
    T = 2.0
    parts = causal_losses(SimpleNamespace(logits=s), SimpleNamespace(logits=t), batch,
                          LossWeights(kl=1.0, temperature=T, ce=0.5))
    ref_kl, ref_ce = [], []
    for b in range(2):
        kls, ces = [], []
        for i in range(4):  # positions predicting tokens 1..4
            p = torch.softmax(t[b, i] / T, -1)
            q = torch.softmax(s[b, i] / T, -1)
            kls.append(float((p * (p.log() - q.log())).sum()) * T * T)
            ces.append(-float(torch.log_softmax(s[b, i], -1)[batch["input_ids"][b, i + 1]]))
        ref_kl.append(sum(kls) / 4)
        ref_ce.append(sum(ces) / 4)
    assert torch.allclose(parts["kl"], torch.tensor(ref_kl), atol=1e-5)
    assert torch.allclose(parts["ce"], torch.tensor(ref_ce), atol=1e-5)
    assert torch.allclose(parts["total"], parts["kl"] + 0.5 * parts["ce"])


def test_causal_kl_ignores_padding_and_is_zero_for_identical_logits():
    torch.manual_seed(0)
    s = torch.randn(1, 6, 7)
    batch = {"input_ids": torch.zeros(1, 6, dtype=torch.long), "attention_mask": torch.tensor([[1, 1, 1, 1, 0, 0]])}
    t = s.clone()
    t[0, 4:] += 100.0  # differences only where the targets are padding
    parts = causal_losses(SimpleNamespace(logits=s), SimpleNamespace(logits=t), batch, LossWeights())
    assert float(parts["kl"]) == pytest.approx(0.0, abs=1e-6)


def test_encoder_losses_match_formulas():
    torch.manual_seed(0)
    s, t = torch.randn(3, 4, 8), torch.randn(3, 4, 8)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])
    parts = encoder_losses(SimpleNamespace(last_hidden_state=s), SimpleNamespace(last_hidden_state=t),
                           {"attention_mask": mask}, LossWeights(cosine=1.0, hidden=1.0, relation=1.0), "mean")
    for i in range(3):
        n = int(mask[i].sum())
        es, et = s[i, :n].mean(0), t[i, :n].mean(0)
        assert float(parts["cosine"][i]) == pytest.approx(1 - float(F.cosine_similarity(es, et, dim=0)), abs=1e-5)
    scale = float(sum(t[i, :int(mask[i].sum())].pow(2).mean(-1).sum() for i in range(3)) / mask.sum())
    ref_hidden = [float((s[i, :int(mask[i].sum())] - t[i, :int(mask[i].sum())]).pow(2).mean(-1).mean()) / scale
                  for i in range(3)]
    assert torch.allclose(parts["hidden"], torch.tensor(ref_hidden), atol=1e-5)


# ---- schedules --------------------------------------------------------------------------------

def test_cubic_sparsity_schedule_follows_zhu_and_gupta():
    assert cubic_sparsity(0, 0, 100, 0.0, 0.8) == 0.0
    assert cubic_sparsity(100, 0, 100, 0.0, 0.8) == pytest.approx(0.8)
    assert cubic_sparsity(50, 0, 100, 0.0, 0.8) == pytest.approx(0.8 - 0.8 * 0.5 ** 3)
    values = [cubic_sparsity(t, 10, 90, 0.0, 0.5) for t in range(0, 101)]
    assert all(b >= a for a, b in zip(values, values[1:]))  # never decreases
    assert pruning_steps(0, 50, 20) == [0, 20, 40, 50]


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    f = [lr_factor(t, 100, 10, 0.1) for t in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert f[10] == pytest.approx(1.0) and f[-1] == pytest.approx(0.1, abs=1e-3)
    assert all(b <= a + 1e-12 for a, b in zip(f[10:], f[11:]))


# ---- the straight-through estimator --------------------------------------------------------------

def test_fake_quant_weight_is_the_grid_and_passes_gradients_inside_the_range():
    from slimformer.nn.spec import QuantSpec, dequantize, quantize
    torch.manual_seed(0)
    spec = QuantSpec(4, 8, False)
    W = torch.randn(3, 16)
    q, s, z = quantize(W, spec)
    w = dequantize(q, s, z, spec).clone().requires_grad_(True)
    assert torch.equal(fake_quant_weight(w, s, z, spec), dequantize(q, s, z, spec))
    big = (w.detach() * 0 + 1e3).requires_grad_(True)  # far outside the grid: clipped, no gradient
    fake_quant_weight(w, s, z, spec).sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))
    fake_quant_weight(big, s, z, spec).sum().backward()
    assert torch.equal(big.grad, torch.zeros_like(big))


# ---- the stage on tiny models -------------------------------------------------------------------

@pytest.mark.parametrize("family", ["llama", "bert", "gpt2"])
def test_masks_stay_exactly_zero_after_every_step(tiny, family):
    original = tiny[family]
    student = copy.deepcopy(original)
    prune_model(student, PruneConfig(method="magnitude", sparsity=0.5, pattern="2:4"), progress=False)
    masks = {n: m.clone() for n, m in student.masks.items()}
    seen = []

    def check(*_):
        for name, keep in masks.items():
            w = student.module.get_submodule(name).weight
            seen.append(bool((w.detach()[~keep] == 0).all()))

    handle = register_optimizer_step_post_hook(check)
    try:
        before = {n: student.module.get_submodule(n).weight.detach().clone() for n in masks}
        log = recover(student, original, quick(), progress=False)
    finally:
        handle.remove()
    assert len(seen) == 6 * len(masks) and all(seen)
    assert log.masked_fraction == pytest.approx(0.5)
    changed = any(not torch.equal(before[n], student.module.get_submodule(n).weight) for n in masks)
    assert changed  # kept weights did train


def _peaked(tiny, family="llama"):
    """A tiny random model whose next-token distributions are far from uniform (a larger LM head),
    so distillation has something to match."""
    teacher = copy.deepcopy(tiny[family])
    with torch.no_grad():
        teacher.module.get_submodule(teacher.arch.head).weight.mul_(30.0)
    return teacher


def test_quantized_model_retrains_as_fake_quant_and_returns_to_integer_kernels(tiny, tmp_path):
    original = _peaked(tiny)
    text = tmp_path / "few.txt"  # a few windows, seen many times: the KL on them must fall
    text.write_text(bundled_path("wikitext2", "validation").read_text()[:3000])
    cfg = quick(steps=30, lr=5e-4, data=[str(text)], restore_best=False)

    def compressed(kernel):
        m = copy.deepcopy(original)
        prune_model(m, PruneConfig(method="magnitude", sparsity=0.5), progress=False)
        quantize_model(m, QuantizeConfig(method="rtn", bits=4, group_size=32, kernel=kernel), progress=False)
        return m

    student, simulated = compressed("auto"), compressed("simulated")
    kinds = {n: m.describe() for n, m in student.module.named_modules() if isinstance(m, QuantLinear)}
    # step 0 of QAT computes what the quantized model computes (compared with the simulated path:
    # the int4 kernel rounds activations to bf16)
    ids = build_train_set(original, [str(text)], 32, 2).examples  # the windows it trains on
    with torch.no_grad():
        ref = simulated.module(input_ids=ids).logits
    fake = copy.deepcopy(simulated)
    to_fake(fake)
    with torch.no_grad():
        assert torch.allclose(fake.module(input_ids=ids).logits, ref, atol=1e-5)
    log = recover(simulated, original, cfg, progress=False)
    recover(student, original, cfg, progress=False)
    after = {n: m.describe() for n, m in student.module.named_modules() if isinstance(m, QuantLinear)}
    assert after == kinds and log.qat_layers == len(kinds)  # same formats, same integer kernels
    assert not any(isinstance(m, FakeQuantLinear) for m in student.module.modules())
    for name, keep in student.masks.items():  # pruned weights are codes equal to the zero point
        assert (student.module.get_submodule(name).dequantized()[~keep] == 0).all()
    before = _kl(original, fake, ids)
    # QAT optimised the KL through the fixed grids, and rounding back onto them keeps the gain
    assert _kl(original, simulated, ids) < 0.7 * before
    assert _kl(original, student, ids) < 0.7 * before


def _kl(teacher, student, ids) -> float:
    with torch.no_grad():
        t = teacher.module(input_ids=ids).logits
        s = student.module(input_ids=ids).logits
    return float(causal_losses(SimpleNamespace(logits=s), SimpleNamespace(logits=t), {"input_ids": ids},
                               LossWeights())["kl"].mean())


def test_trimmed_encoder_recovers_towards_the_original(tiny):
    original = tiny["bert"]
    student = copy.deepcopy(original)
    trim_model(student, TrimConfig(heads=0.5, ffn=0.5, score="magnitude", compensate="none"), None,
               original=original, progress=False)
    log = recover(student, original, quick(steps=20, lr=3e-3, eval_every=10), progress=False)
    assert log.after < log.before  # held-out distillation loss
    assert student.module.get_submodule(student.arch.blocks[0].ffn.up).out_features == 48


def test_gradual_pruning_reaches_its_target_on_a_cubic_schedule(tiny):
    original = tiny["llama"]
    student = copy.deepcopy(original)
    log = recover(student, original, quick(steps=10, prune_to=0.6, prune_end=0.5, prune_every=2), progress=False)
    assert log.gradual_sparsity == pytest.approx(0.6, abs=0.01)
    for name, keep in student.masks.items():
        w = student.module.get_submodule(name).weight
        assert (w[~keep] == 0).all()
        assert (~keep).float().mean() == pytest.approx(0.6, abs=0.01)


def test_lora_trains_adapters_only_and_merges_back(tiny):
    original = tiny["llama"]
    student = copy.deepcopy(original)
    emb = student.module.get_submodule(student.arch.embeddings[0]).weight.detach().clone()
    log = recover(student, original, quick(lora=4, lr=1e-2), progress=False)
    assert type(student.module) is type(original.module)  # peft wrapper gone
    assert not any("lora" in n for n, _ in student.module.named_parameters())
    name = student.arch.blocks[0].attn.q
    assert not torch.equal(student.module.get_submodule(name).weight, original.module.get_submodule(name).weight)
    assert torch.equal(student.module.get_submodule(student.arch.embeddings[0]).weight, emb)
    assert log.lora == 4


def test_lora_on_a_quantized_model_is_a_clear_error(tiny):
    student = copy.deepcopy(tiny["llama"])
    quantize_model(student, QuantizeConfig(method="rtn", bits=8), progress=False)
    with pytest.raises(ConfigValueError, match="put recover before quantize"):
        recover(student, tiny["llama"], quick(lora=4), progress=False)
    assert any(isinstance(m, QuantLinear) for m in student.module.modules())  # left as it was


def _plan(**kw) -> TrainPlan:
    base = dict(steps=6, batch_size=2, micro_batch=1, lr=1e-3, weight_decay=0.0, warmup=0, min_lr_ratio=1.0,
                clip=1.0, eval_every=1, save_every=1, patience=0, seed=0, losses=LossWeights(),
                fingerprint="test")
    base.update(kw)
    return TrainPlan(**base)


def _student(tiny, family="llama"):
    student = copy.deepcopy(tiny[family])
    for p in student.module.parameters():
        p.requires_grad_(True)
    return student


def test_early_stopping_keeps_and_restores_the_best_checkpoint(tiny, tmp_path):
    student = _student(tiny)
    data = build_train_set(student, ["wikitext2:validation"], 32, 2)
    values = iter([5.0, 4.0, 4.5, 4.6, 4.7, 4.8])
    weights = {}

    def fake_eval(m):
        weights[len(weights) + 1] = copy.deepcopy(m.module.state_dict())
        return next(values)

    res = train(student, tiny["llama"], data, _plan(patience=2), Evaluation("x", fake_eval, False), tmp_path)
    assert res.stopped_early and res.steps_done == 4 and res.best_step == 2 and res.best_value == 4.0
    for k, v in student.module.state_dict().items():
        assert torch.equal(v, weights[2][k])


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(tiny, tmp_path):
    student = _student(tiny)
    data = build_train_set(student, ["wikitext2:validation"], 32, 2)
    calls = {"n": 0}

    def poison(module, args, out):
        calls["n"] += 1
        if calls["n"] > 6:  # 2 micro-batches a step: steps 1-3 are fine
            out.logits.fill_(float("nan"))
        return out

    student.module.register_forward_hook(poison)
    ev = Evaluation("x", lambda m: 1.0, False)
    with pytest.raises(TrainingDiverged, match=r"step 4.*last good checkpoint"):
        train(student, tiny["llama"], data, _plan(), ev, tmp_path)
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert state["step"] == 3
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_an_old_checkpoint_without_resume_is_an_error(tiny, tmp_path):
    student = _student(tiny)
    data = build_train_set(student, ["wikitext2:validation"], 32, 2)
    (tmp_path / "last.pt").write_bytes(b"x")
    with pytest.raises(SlimformerError, match="--resume"):
        train(student, tiny["llama"], data, _plan(), Evaluation("x", lambda m: 1.0, False), tmp_path)


def load_file_state(folder) -> dict:
    from safetensors.torch import load_file
    return load_file(str(Path(folder) / "model.safetensors"))


def _worker(args: list[str], env_extra: dict | None = None, launcher: list[str] | None = None, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", **(env_extra or {})}
    cmd = (launcher or [sys.executable]) + [str(WORKER)] + args
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kw)


def test_resume_after_a_kill_reaches_the_same_weights(tiny_dir, tmp_path):
    model = str(tiny_dir["llama"])
    full = _worker([model, str(tmp_path / "full.pt"), "--steps", "12", "--checkpoints", str(tmp_path / "a")])
    assert full.wait(300) == 0, full.stdout.read().decode()[-2000:]
    ck = tmp_path / "b"
    run = _worker([model, str(tmp_path / "x.pt"), "--steps", "12", "--checkpoints", str(ck), "--slow", "0.5"])
    deadline = time.time() + 300
    while not (ck / "last.pt").exists() and time.time() < deadline and run.poll() is None:
        time.sleep(0.05)
    run.send_signal(signal.SIGKILL)
    run.wait(60)
    assert not (tmp_path / "x.pt").exists()  # it really died midway
    killed_at = torch.load(ck / "last.pt", weights_only=True)["step"]
    assert 0 < killed_at < 12
    resumed = _worker([model, str(tmp_path / "resumed.pt"), "--steps", "12", "--checkpoints", str(ck), "--resume"])
    assert resumed.wait(300) == 0, resumed.stdout.read().decode()[-2000:]
    a, b = torch.load(tmp_path / "full.pt", weights_only=True), torch.load(tmp_path / "resumed.pt", weights_only=True)
    assert b["log"]["resumed_from"] == killed_at and b["log"]["steps"] == 12
    for k in a["state"]:
        assert torch.equal(a["state"][k], b["state"][k]), k


TORCHRUN = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
needs_torchrun = pytest.mark.skipif(not Path(TORCHRUN).exists(), reason="torchrun not installed")


def free_port() -> int:
    """A port nothing listens on now: fixed ports collide across xdist workers and with a killed run's
    socket still in TIME_WAIT."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@needs_torchrun
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_gloo_processes_match_one_process(tiny_dir, tmp_path, parallel):
    model = str(tiny_dir["llama"])
    one = _worker([model, str(tmp_path / "one.pt"), "--checkpoints", str(tmp_path / "c1")])
    assert one.wait(300) == 0, one.stdout.read().decode()[-2000:]
    two = _worker([model, str(tmp_path / "two.pt"), "--checkpoints", str(tmp_path / "c2"), "--parallel", parallel],
                  launcher=[TORCHRUN, "--nproc_per_node", "2", "--master_port", str(free_port())])
    out = two.wait(300), two.stdout.read().decode()
    assert out[0] == 0, out[1][-3000:]
    a, b = torch.load(tmp_path / "one.pt", weights_only=True), torch.load(tmp_path / "two.pt", weights_only=True)
    assert (a["world"], b["world"], b["backend"]) == (1, 2, "gloo")
    for k in a["state"]:
        # same global batch, gradients averaged over gloo (DDP all-reduce, or FSDP's reduce-scatter
        # of sharded gradients and AdamW on the shards): equal up to float summation order
        assert torch.allclose(a["state"][k], b["state"][k], rtol=1e-4, atol=1e-6), k
    for name, keep in b["masks"].items():  # pruned positions stayed zero on the shards
        assert not b["state"][f"{name}.weight"][~keep.bool()].any(), name
    trained = load_file_state(tiny_dir["llama"])
    assert any(not torch.equal(a["state"][k], trained[k]) for k in trained if k in a["state"])


@needs_torchrun
def test_fsdp_resume_after_a_kill_reaches_the_same_weights(tiny_dir, tmp_path):
    """Checkpoints under FSDP hold the gathered weights and optimizer state; a resumed run scatters
    them again and ends where an uninterrupted one does."""
    model = str(tiny_dir["llama"])
    launch = lambda: [TORCHRUN, "--nproc_per_node", "2", "--master_port", str(free_port())]  # noqa: E731
    common = ["--steps", "12", "--parallel", "fsdp"]
    full = _worker([model, str(tmp_path / "full.pt"), "--checkpoints", str(tmp_path / "a"), *common],
                   launcher=launch())
    assert full.wait(300) == 0, full.stdout.read().decode()[-2000:]
    ck = tmp_path / "b"
    run = _worker([model, str(tmp_path / "x.pt"), "--checkpoints", str(ck), "--slow", "0.5", *common],
                  launcher=launch())
    deadline = time.time() + 300
    while not (ck / "last.pt").exists() and time.time() < deadline and run.poll() is None:
        time.sleep(0.05)
    import psutil
    for proc in [psutil.Process(run.pid), *psutil.Process(run.pid).children(recursive=True)]:
        proc.kill()  # torchrun and both workers, at once
    run.wait(60)
    assert not (tmp_path / "x.pt").exists()
    killed_at = torch.load(ck / "last.pt", weights_only=True)["step"]
    assert 0 < killed_at < 12
    resumed = _worker([model, str(tmp_path / "resumed.pt"), "--checkpoints", str(ck), "--resume", *common],
                      launcher=launch())
    assert resumed.wait(300) == 0, resumed.stdout.read().decode()[-2000:]
    a, b = torch.load(tmp_path / "full.pt", weights_only=True), torch.load(tmp_path / "resumed.pt", weights_only=True)
    assert b["log"]["resumed_from"] == killed_at and b["log"]["steps"] == 12
    for k in a["state"]:
        assert torch.allclose(a["state"][k], b["state"][k], rtol=1e-5, atol=1e-7), k


def test_fsdp_refuses_what_it_does_not_shard():
    with pytest.raises(RecipeError, match="parallel: fsdp trains the model's own weights"):
        parse_recipe({"stages": [{"recover": {"parallel": "fsdp", "lora": 8}}]})
    with pytest.raises(RecipeError, match="recover parallel must be ddp or fsdp"):
        parse_recipe({"stages": [{"recover": {"parallel": "zero3"}}]})


# ---- recipe and compress ---------------------------------------------------------------------------

def test_recipe_errors_name_what_fits():
    with pytest.raises(RecipeError, match="unknown option 'stpes'"):
        parse_recipe({"stages": [{"recover": {"stpes": 10}}]})
    with pytest.raises(RecipeError, match="prune_to must be in"):
        parse_recipe({"stages": [{"recover": {"prune_to": 1.5}}]})
    with pytest.raises(RecipeError, match="train must be blocks or all"):
        parse_recipe({"stages": [{"recover": {"train": "some"}}]})



@pytest.mark.parametrize("opts,match", [
    ({"data": ["wikitext2:validation", "stsb:test"]}, "recover data 'stsb:test': recovery must not train on the test split"),
    ({"data": ["wikitext2:test"]}, "must not train on the test split"),
    ({"eval": "stsb:test"}, "recover eval 'stsb:test'.*must not be chosen on the test split"),
])
def test_test_split_is_refused_when_the_recipe_is_parsed(tiny, tmp_path, opts, match):
    recipe = {"stages": [{"recover": {"steps": 2, **opts}}]}
    with pytest.raises(RecipeError, match=match):
        parse_recipe(recipe)
    # Through compress, the recipe error comes before any work (a refusal by the running stage
    # would be a DataError), and nothing is written.
    from slimformer import compress
    with pytest.raises(RecipeError, match=match):
        compress(tiny["llama"], recipe, out=tmp_path / "out", progress=False)
    assert list(tmp_path.iterdir()) == []
    # The stage's own entry refuses it too (the Python API, no recipe).
    with pytest.raises(ConfigValueError, match="test split"):
        recover(copy.deepcopy(tiny["llama"]), tiny["llama"], quick(**opts), progress=False)
    assert parse_recipe({"stages": [{"recover": {"data": ["stsb:train"], "eval": "stsb:dev"}}]}).stages


def test_compress_with_recover_writes_curves_and_reloads(tiny, tmp_path):
    from slimformer import compress, load
    from test_compress import QUICK_BENCH, QUICK_EVAL
    recipe = {"stages": [{"prune": {"method": "magnitude", "sparsity": 0.5}},
                         {"recover": {"steps": 4, "batch_size": 2, "seq_len": 32, "holdout": 2, "eval_every": 2,
                                      "data": ["wikitext2:validation"]}}],
              "evaluate": QUICK_EVAL, "bench": QUICK_BENCH}
    out = tmp_path / "out"
    r = compress(tiny["llama"], recipe, out=out, progress=False)
    assert (out / "recover_curves.png").stat().st_size > 1000
    assert "recover_curves.png" in (out / "report.md").read_text()
    assert not Path(f"{out}.recover").exists()  # checkpoints removed after a finished run
    assert r.stages[-1].stage == "recover" and r.stages[-1].steps == 4
    again = load(out / "model")
    for name, keep in again.masks.items():
        assert (again.module.get_submodule(name).weight[~keep] == 0).all()


def test_cli_compress_under_torchrun_trains_on_two_processes_and_writes_once(tiny_dir, tmp_path):
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    if not Path(torchrun).exists():
        pytest.skip("torchrun not installed")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "stages:\n  - prune: {method: magnitude, pattern: '2:4'}\n"
        "  - recover: {steps: 4, batch_size: 4, seq_len: 32, holdout: 2, eval_every: 2, data: [wikitext2:validation]}\n"
        "evaluate: {seq_len: 32, max_windows: 2}\n"
        "bench: {batch_sizes: [1], seq_lens: [16], warmup: 0, repeats: 1, throughput_items: 16, throughput_passes: 1,"
        " throughput_seq_len: 32, decode_prompt: 8, decode_new_tokens: 4, decode_repeats: 1, threads: 1}\n")
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", str(free_port()), "-m", "slimformer.cli",
                           "compress", str(tiny_dir["llama"]), "--recipe", str(recipe), "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json
    result = json.loads((out / "results.json").read_text())
    rec = result["stages"][-1]
    assert rec["stage"] == "recover" and rec["steps"] == 4 and rec["masked_fraction"] == pytest.approx(0.5)
    assert (out / "recover_curves.png").exists() and not Path(f"{out}.recover").exists()
