"""The recover stage on a CUDA GPU through Accelerate: a device check, not a benchmark of quality.

    PYTHONPATH=src python benchmarks/gpu_check_recover.py

Builds tiny random models from their configs (nothing to download; a byte-level BPE trained on
bundled WikiText-2 text), then on the GPU: a Llama-shaped decoder pruned 2:4 recovers by KL
distillation in fp32 and bf16 autocast with its masks exact; a BERT encoder quantized W8A8
retrains as fake-quantized (QAT) on the GPU and comes back to integer-kernel QuantLinears on the
CPU (a random encoder loses almost nothing to W8A8, so that run checks the mechanics only).
Prints the device, steps/s and the held-out metric before and after each run.
"""
from __future__ import annotations

import copy
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers as T

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import _tiny_tokenizer  # noqa: E402

from slimformer.model import load  # noqa: E402
from slimformer.prune.stage import PruneConfig, prune_model  # noqa: E402
from slimformer.nn.quant_linear import QuantLinear  # noqa: E402
from slimformer.quant.stage import QuantizeConfig, quantize_model  # noqa: E402
from slimformer.recover import RecoverConfig, recover  # noqa: E402


def build(root: Path, name: str, cfg, cls) -> object:
    tok = _tiny_tokenizer(root / "tok")
    torch.manual_seed(0)
    module = cls.from_config(cfg).eval()
    module.save_pretrained(root / name)
    tok.save_pretrained(root / name)
    return load(root / name)


def main() -> None:
    print("cuda:", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-",
          "torch", torch.__version__, "transformers", T.__version__, flush=True)
    root = Path(tempfile.mkdtemp())
    common = dict(vocab_size=384, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    llama = build(root, "llama", T.LlamaConfig(hidden_size=256, num_hidden_layers=4, num_attention_heads=8,
                                                num_key_value_heads=2, intermediate_size=688,
                                                max_position_embeddings=512, **common), T.AutoModelForCausalLM)
    with torch.no_grad():  # peaked next-token distributions: something to distil
        llama.module.lm_head.weight.mul_(20)
    ok = True
    for precision in ("fp32", "bf16"):
        student = copy.deepcopy(llama)
        prune_model(student, PruneConfig(method="magnitude", pattern="2:4"), progress=False)
        t0 = time.perf_counter()
        log = recover(student, llama, RecoverConfig(steps=60, batch_size=8, seq_len=256, holdout=4, lr=1e-3,
                                                    eval_every=20, precision=precision), progress=False)
        exact = all((student.module.get_submodule(n).weight[~k] == 0).all() for n, k in student.masks.items())
        print(f"llama 2:4 {precision}: held-out ppl {log.before:.1f} -> {log.after:.1f}, {log.steps} steps "
              f"in {time.perf_counter() - t0:.1f} s ({log.tokens:,} tokens), masks exact: {exact}", flush=True)
        ok &= exact and log.after < log.before
    bert = build(root, "bert", T.BertConfig(hidden_size=256, num_hidden_layers=4, num_attention_heads=8,
                                            intermediate_size=1024, max_position_embeddings=512, **common), T.AutoModel)
    student = copy.deepcopy(bert)
    quantize_model(student, QuantizeConfig(method="rtn", bits=8, activations="dynamic"), progress=False)
    log = recover(student, bert, RecoverConfig(steps=40, batch_size=32, holdout=64, lr=1e-4, eval="heldout",
                                               eval_every=20), progress=False)
    kinds = {m.kernel for m in student.module.modules() if isinstance(m, QuantLinear)}
    print(f"bert W8A8 QAT: held-out distillation loss {log.before:.3g} -> {log.after:.3g}, "
          f"{log.qat_layers} layers back on kernels {sorted(kinds)}", flush=True)
    # a random BERT loses almost nothing to W8A8 (loss ~1e-5): the check is that QAT ran on the GPU
    # and the layers came back as integer kernels, not a quality gain
    ok &= log.after < 1e-3 and kinds == {"int8_dynamic"} and log.qat_layers == 24
    print("GPU CHECK", "PASSED" if ok else "FAILED")


if __name__ == "__main__":
    main()
