"""Non-overlapping token windows of a text, for perplexity, fidelity and calibration."""
from __future__ import annotations

import torch

from ..data.tokens import text_ids
from ..errors import DataError
from ..model import Model


def token_windows(model: Model, text: str, seq_len: int, max_windows: int | None = None) -> torch.Tensor:
    """Tokenize the whole text once (tokenizer defaults), cut into [n, seq_len]; the tail is dropped."""
    model.check_seq_len(seq_len)
    ids = text_ids(model.tokenizer, text)
    n = ids.numel() // seq_len
    if max_windows is not None:
        if max_windows < 1:
            raise DataError(f"--max-windows must be at least 1 (got {max_windows})")
        n = min(n, max_windows)
    if n == 0:
        raise DataError(f"the text has {ids.numel()} tokens, fewer than one window of {seq_len}; "
                        "use a longer text or a smaller --seq-len")
    return ids[: n * seq_len].view(n, seq_len)


def batches(windows: torch.Tensor, batch_size: int):
    for start in range(0, windows.shape[0], batch_size):
        yield windows[start:start + batch_size]
