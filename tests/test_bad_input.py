"""Bad input a user can bring: each is one line on stderr and exit code 2, with nothing written.

Truncated weights, weights holding NaN / inf, a pickle that carries code; results JSON stays
strict JSON when a value is NaN; eval and bench write a file only when --json asks for one."""
import copy
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
import transformers as T

from slimformer.cli import main
from slimformer.errors import CorruptModelError
from slimformer.model import load, save
from slimformer.model.load import check_finite
from slimformer.report.table import num, signed, times
from slimformer.report.views import eval_rows
from slimformer.results import EvalResult

BENCH_FAST = ["--threads", "1", "--batch-sizes", "1", "--seq-lens", "16", "--repeats", "1",
              "--decode-new-tokens", "4"]


def _strict_json(text: str):
    """json.loads that refuses the NaN / Infinity tokens Python's json writes by default."""
    def refuse(token):
        raise ValueError(f"not JSON: {token}")
    return json.loads(text, parse_constant=refuse)


def _one_line_exit_2(argv, capsys, message: str) -> str:
    assert main(argv) == 2, argv
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("slimformer: error:"), err
    assert len(err.splitlines()) == 1, err
    assert message in err, err
    assert "Traceback" not in captured.err + captured.out
    return err


def _copy(tiny_dir, family, tmp_path):
    folder = tmp_path / family
    shutil.copytree(tiny_dir[family], folder)
    return folder


def _poisoned(tiny_dir, family, tmp_path, edits: dict[str, tuple[tuple, float]]):
    """A copy of a tiny model folder whose weights hold the given values: {name: (index, value)}."""
    folder = _copy(tiny_dir, family, tmp_path)
    cls = T.AutoModel if family in ("bert", "roberta", "distilbert") else T.AutoModelForCausalLM
    module = cls.from_pretrained(folder)
    params = dict(module.named_parameters())
    with torch.no_grad():
        for name, (index, value) in edits.items():
            params[name][index] = value
    module.save_pretrained(folder)
    return folder


# -- truncated safetensors ---------------------------------------------------------------------

def test_truncated_safetensors_is_one_line_exit_2(tiny_dir, tmp_path, capsys):
    folder = _copy(tiny_dir, "llama", tmp_path)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptModelError, match="truncated or corrupt"):
        load(folder)
    _one_line_exit_2(["info", str(folder)], capsys, "truncated or corrupt")
    out = tmp_path / "out"
    _one_line_exit_2(["compress", str(folder), "--out", str(out)], capsys, "truncated or corrupt")
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["llama"]  # no partial output folder beside it


def test_truncated_safetensors_console_exit_code(tiny_dir, tmp_path):
    """The real process: exit code 2 and one stderr line (main measured a Rust traceback, exit 1)."""
    folder = _copy(tiny_dir, "gpt2", tmp_path)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # inside the header
    proc = subprocess.run([sys.executable, "-m", "slimformer.cli", "info", str(folder)],
                          capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "truncated or corrupt" in proc.stderr


def test_truncated_sparse_slimformer_weights(tiny, tmp_path, capsys):
    """A pruned model's slimformer.safetensors goes through slimformer's own reader: same error."""
    from slimformer.model.arch import get_module
    model = copy.deepcopy(tiny["bert"])
    name = model.arch.linears[0]
    weight = get_module(model.module, name).weight
    keep = torch.rand_like(weight) > 0.5
    with torch.no_grad():
        weight.mul_(keep)
    model.masks[name] = keep
    save(model, tmp_path / "m")
    sparse = tmp_path / "m" / "slimformer.safetensors"
    assert sparse.is_file()
    sparse.write_bytes(sparse.read_bytes()[:-64])
    _one_line_exit_2(["info", str(tmp_path / "m")], capsys, "truncated or corrupt")


# -- NaN / inf weights ---------------------------------------------------------------------------

def test_nan_weights_are_refused_at_load_naming_the_first(tiny_dir, tmp_path, capsys):
    first, later = "model.layers.0.self_attn.k_proj.weight", "model.layers.1.mlp.down_proj.weight"
    folder = _poisoned(tiny_dir, "llama", tmp_path, {later: ((3, 4), float("inf")),
                                                     first: ((0, 1), float("nan"))})
    with pytest.raises(CorruptModelError) as e:
        load(folder)
    assert f"parameter {first} holds 1 NaN and 0 inf values" in str(e.value)
    assert later not in str(e.value)
    err = _one_line_exit_2(["eval", str(folder), "--task", "ppl", "--seq-len", "32", "--max-windows", "2"],
                           capsys, first)
    assert "download it again or use an earlier checkpoint" in err
    out = tmp_path / "out"
    _one_line_exit_2(["compress", str(folder), "--out", str(out)], capsys, first)
    assert not out.exists()


def test_inf_weights_in_an_encoder_are_refused(tiny_dir, tmp_path, capsys):
    name = "encoder.layer.1.intermediate.dense.weight"
    folder = _poisoned(tiny_dir, "bert", tmp_path, {name: ((0, 0), float("-inf"))})
    _one_line_exit_2(["eval", str(folder), "--task", "sts"], capsys, f"{name} holds 0 NaN and 1 inf values")


def test_finite_check_covers_buffers_and_ignores_overflowing_sums():
    m = torch.nn.Linear(4, 4)
    m.register_buffer("scale", torch.ones(3))
    m.register_buffer("codes", torch.zeros(3, dtype=torch.int8))
    check_finite(m, "m")  # all finite: no error
    with torch.no_grad():
        m.weight.fill_(3e38)  # every element finite, their sum is inf in float32
    assert not torch.isfinite(m.weight.sum())
    check_finite(m, "m")
    m.scale[1] = float("nan")
    with pytest.raises(CorruptModelError, match="buffer scale holds 1 NaN and 0 inf values"):
        check_finite(m, "m")


def test_every_tiny_family_passes_the_finite_check(tiny):
    for name, model in tiny.items():
        check_finite(model.module, name)


# -- NaN in results: JSON null, the table says why ------------------------------------------------

def _nan_result() -> EvalResult:
    return EvalResult(task="ppl", model="m", metric="perplexity", value=float("nan"), higher_is_better=False,
                      data="wikitext2", split="test", n=10, protocol="p",
                      extra={"kl": float("inf"), "loss": [1.0, float("-inf")], "ok": 2.5})


def test_results_json_writes_null_for_nan(tmp_path):
    path = tmp_path / "r.json"
    text = _nan_result().to_json(path)
    assert "NaN" not in text and "Infinity" not in text
    d = _strict_json(path.read_text())
    assert d["value"] is None and d["extra"]["kl"] is None
    assert d["extra"]["loss"] == [1.0, None] and d["extra"]["ok"] == 2.5


def test_tables_say_why_a_value_is_missing():
    rows = eval_rows(_nan_result().to_dict())
    assert rows[0][3] == "n/a (NaN)"
    assert ["", "", "kl", "n/a (inf)", "", ""] in rows
    assert times(float("inf")) == "n/a (inf)" and times(1.5) == "1.50x"
    assert signed(float("nan")) == "n/a (NaN)" and signed(-0.5) == "-0.50"
    assert num(float("-inf")) == "n/a (-inf)" and num(1234.5, 1) == "1,234.5" and num(None) == "-"


def test_eval_cli_with_a_nan_result(monkeypatch, tmp_path, capsys):
    from slimformer import api
    monkeypatch.setattr(api, "evaluate", lambda *a, **k: _nan_result())
    path = tmp_path / "e.json"
    assert main(["eval", "m", "--json", str(path)]) == 0
    assert "n/a (NaN)" in capsys.readouterr().out
    assert _strict_json(path.read_text())["value"] is None


def test_saved_stage_log_with_nan_is_strict_json(tiny, tmp_path):
    model = copy.deepcopy(tiny["bert"])
    model.log = [{"stage": "recover", "before": float("nan"), "after": 1.0}]
    save(model, tmp_path / "m")
    meta = _strict_json((tmp_path / "m" / "slimformer.json").read_text())
    assert meta["stages"] == [{"stage": "recover", "before": None, "after": 1.0}]


# -- no file unless --json ---------------------------------------------------------------------------

def test_eval_and_bench_write_no_file_without_json(tiny_dir, tmp_path, monkeypatch, capsys):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    assert main(["eval", str(tiny_dir["gpt2"]), "--task", "ppl", "--seq-len", "32", "--max-windows", "2"]) == 0
    assert main(["bench", str(tiny_dir["bert"]), *BENCH_FAST]) == 0
    out = capsys.readouterr().out
    assert "perplexity" in out and "throughput" in out and "written:" not in out
    assert list(cwd.iterdir()) == []
    assert main(["bench", str(tiny_dir["bert"]), *BENCH_FAST, "--json", "b.json"]) == 0
    assert [p.name for p in cwd.iterdir()] == ["b.json"]
    assert _strict_json((cwd / "b.json").read_text())["threads"] == 1


# -- pickle-only folders ----------------------------------------------------------------------------

def _pickle_folder(tiny_dir, tmp_path, extra: dict | None = None):
    folder = _copy(tiny_dir, "llama", tmp_path)
    state = T.AutoModelForCausalLM.from_pretrained(folder).state_dict()
    (folder / "model.safetensors").unlink()
    torch.save({**state, **(extra or {})}, folder / "pytorch_model.bin")
    return folder, state


def test_pickle_only_folder_with_plain_tensors_loads(tiny_dir, tmp_path):
    folder, state = _pickle_folder(tiny_dir, tmp_path)
    loaded = load(folder).module.state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


class _RunsCode:
    """Unpickling this calls os.system: what a malicious checkpoint does."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_carrying_code_is_refused_and_not_run(tiny_dir, tmp_path, capsys):
    marker = tmp_path / "code-ran"
    folder, _ = _pickle_folder(tiny_dir, tmp_path, {"evil": _RunsCode(marker)})
    # The payload is real: an unrestricted unpickler runs it.
    torch.load(folder / "pytorch_model.bin", weights_only=False)
    assert marker.exists()
    marker.unlink()
    with pytest.raises(CorruptModelError, match="could run code"):
        load(folder)
    out = tmp_path / "out"
    err = _one_line_exit_2(["eval", str(folder), "--task", "ppl", "--seq-len", "32", "--max-windows", "2"],
                           capsys, "weights_only=True")
    assert "system" in err  # names the global the pickle would have called
    _one_line_exit_2(["compress", str(folder), "--out", str(out)], capsys, "could run code")
    assert not marker.exists() and not out.exists()
