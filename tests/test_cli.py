"""The command line: each command works, and every user mistake is one line on stderr, exit 2."""
import json
import subprocess
import sys

import pytest

from slimformer.cli import main

BENCH_FAST = ["--threads", "1", "--batch-sizes", "1", "--seq-lens", "16", "--repeats", "1",
              "--decode-new-tokens", "4"]


def test_info(tiny_dir, capsys, tmp_path):
    assert main(["info", str(tiny_dir["llama"]), "--json", str(tmp_path / "i.json")]) == 0
    out = capsys.readouterr().out
    assert "4 / 2" in out and "gated" in out and "params: total" in out
    assert json.loads((tmp_path / "i.json").read_text())["kv_heads"] == 2


def test_eval_ppl_writes_json(tiny_dir, capsys, tmp_path):
    path = tmp_path / "e.json"
    assert main(["eval", str(tiny_dir["gpt2"]), "--task", "ppl", "--seq-len", "32", "--max-windows", "2",
                 "--json", str(path)]) == 0
    assert "perplexity" in capsys.readouterr().out
    assert json.loads(path.read_text())["extra"]["windows"] == 2


def test_bench_vs_prints_ratios(tiny_dir, capsys, tmp_path):
    path = tmp_path / "b.json"
    assert main(["bench", str(tiny_dir["bert"]), "--vs", str(tiny_dir["distilbert"]), *BENCH_FAST,
                 "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "ratio" in out and "throughput" in out and "thread" in out
    assert "throughput" in json.loads(path.read_text())["ratios"]


def test_compress_with_recipe_file(tiny_dir, tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("evaluate: {seq_len: 32, max_windows: 2}\n"
                      "bench: {batch_sizes: [1], seq_lens: [16], repeats: 1, warmup: 0, throughput_items: 2,"
                      " throughput_seq_len: 32, decode_new_tokens: 4, decode_repeats: 1}\n")
    assert main(["compress", str(tiny_dir["qwen2"]), "--recipe", str(recipe), "--out", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "report.md").is_file()
    assert "no compression stages" in capsys.readouterr().out


def _bad(tmp_path, tiny_dir):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    typo = tmp_path / "typo.yaml"
    typo.write_text("stages:\n  - prnue: {sparsity: 0.5}\n")
    existing = tmp_path / "exists"
    existing.mkdir()
    return [
        (["info", str(tmp_path / "missing")], "no such file or folder"),
        (["eval", str(tiny_dir["llama"]), "--task", "ppl", "--seq-len", "4096"], "exceeds the model's 128 positions"),
        (["eval", str(tiny_dir["llama"]), "--task", "ppl", "--data", str(empty)], "is empty"),
        (["eval", str(tiny_dir["bert"]), "--task", "sts", "--data", "nosuchset"], "no such data file"),
        (["eval", str(tiny_dir["bert"]), "--task", "fidelity"], "reference"),
        (["compress", str(tiny_dir["bert"]), "--recipe", str(typo), "--out", str(tmp_path / "x")], "unknown stage 'prnue'"),
        (["compress", str(tiny_dir["bert"]), "--out", str(existing)], "already exists"),
    ]


def test_user_mistakes_are_one_line_exit_2(tiny_dir, tmp_path, capsys):
    for argv, message in _bad(tmp_path, tiny_dir):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("slimformer: error:") and message in err, (argv, err)
        assert len(err.splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_console_script_has_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "slimformer.cli", "info", str(tmp_path / "nope")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr


@pytest.mark.parametrize("argv", [["bench", "x", "--batch-sizes", "0"], ["eval", "x", "--seq-len", "-3"]])
def test_bad_numbers_are_rejected_by_the_parser(argv):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
