"""What a tune asks for: a quality budget relative to the original (on validation data), the speed
objective in a runtime at a thread count, and how much wall time the search may take."""
from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import ConfigValueError

OBJECTIVES = ("throughput", "latency", "decode", "size")
TUNE_RUNTIMES = ("auto", "torch", "onnxruntime", "llama.cpp", "openvino")


@dataclass
class TuneConfig:
    max_drop: float | None = None  # task points (STS Spearman x 100) below the original, validation data
    max_ppl_ratio: float | None = None  # causal LMs: validation perplexity at most this x the original's
    min_fidelity: float | None = None  # mean cosine to the original's embeddings / top-token agreement floor
    objective: str = "throughput"  # throughput | latency (batch 1) | decode (tokens/s) | size (bytes)
    runtime: str = "auto"  # auto: onnxruntime for encoders, llama.cpp for decoders, torch if absent
    threads: int = 1
    budget_s: float = 3600.0  # wall time of the whole tune (search, recovery, final report)
    trials: int | None = None  # cap on one-shot trials (None: as many as the budget allows)
    finalists: int = 3  # one-shot points that get recovery
    recover_share: float = 0.5  # part of the budget for recovering the finalists
    recover_steps: int = 1000  # per finalist, cut short by its share of the budget
    data: str | None = None  # the user's validation file (STS pairs / text); default: bundled dev sets
    seed: int = 0

    def validate(self, causal: bool | None) -> None:
        """causal None: the checks that need no model (the CLI runs them before loading it)."""
        if self.objective not in OBJECTIVES:
            raise ConfigValueError(f"tune objective {self.objective!r} unknown; use one of {', '.join(OBJECTIVES)}")
        if self.runtime not in TUNE_RUNTIMES:
            raise ConfigValueError(f"tune runtime {self.runtime!r} unknown; use one of {', '.join(TUNE_RUNTIMES)}")
        if self.objective == "decode" and causal is False:
            raise ConfigValueError("--objective decode is for causal LMs; sentence encoders: throughput, "
                                   "latency or size")
        if causal is True and self.max_drop is not None:
            raise ConfigValueError("--max-drop is an STS budget for sentence encoders; a causal LM takes "
                                   "--max-ppl-ratio (or --min-fidelity)")
        if causal is False and self.max_ppl_ratio is not None:
            raise ConfigValueError("--max-ppl-ratio is for causal LMs; a sentence encoder takes --max-drop "
                                   "(or --min-fidelity)")
        if self.max_drop is None and self.max_ppl_ratio is None and self.min_fidelity is None:
            raise ConfigValueError("tune needs a quality budget: --max-drop POINTS (encoders), --max-ppl-ratio "
                                   "R (causal LMs) or --min-fidelity COSINE")
        if self.max_drop is not None and not 0 <= self.max_drop < 100:
            raise ConfigValueError(f"--max-drop is in STS points, 0 to 100 (got {self.max_drop})")
        if self.max_ppl_ratio is not None and self.max_ppl_ratio < 1.0:
            raise ConfigValueError(f"--max-ppl-ratio must be at least 1.0 (got {self.max_ppl_ratio})")
        if self.min_fidelity is not None and not 0 < self.min_fidelity <= 1:
            raise ConfigValueError(f"--min-fidelity is a mean cosine in (0, 1] (got {self.min_fidelity})")
        if self.threads < 1 or self.finalists < 0 or self.recover_steps < 1:
            raise ConfigValueError("tune threads and recover steps must be at least 1, finalists at least 0")
        if not 0 <= self.recover_share < 1:
            raise ConfigValueError(f"tune recover_share must be in [0, 1) (got {self.recover_share})")
        if self.budget_s < 10:
            raise ConfigValueError(f"--budget {self.budget_s:.0f}s leaves no time to search; give minutes, e.g. 60m")
        if self.trials is not None and self.trials < 1:
            raise ConfigValueError(f"--trials must be at least 1 (got {self.trials})")


def parse_budget(text: str) -> float:
    """'90m', '1.5h', '600s' or '600' (seconds) -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", str(text))
    if not m:
        raise ConfigValueError(f"budget {text!r} not understood; give e.g. 60m, 1.5h or 900s")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]
