"""Bundled evaluation sets (copied from their sources with attribution, see sets/*/SOURCE.md).

They ship inside the package (package data, ``slimformer/data/sets/<name>/``), so an installed
wheel finds them wherever it lives; ``$SLIMFORMER_DATA`` points elsewhere (a folder of the same
layout)."""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import DataError

# name -> split -> file, relative to the data folder
BUNDLED: dict[str, dict[str, str]] = {
    "stsb": {"train": "stsb/train.tsv", "dev": "stsb/dev.tsv", "test": "stsb/test.tsv"},
    "wikitext2": {"validation": "wikitext2/wiki.valid.raw", "test": "wikitext2/wiki.test.raw"},
    "sst2": {"train": "sst2/train.tsv", "dev": "sst2/dev.tsv"},
}
_SPLIT_ALIASES = {"valid": "validation", "val": "validation", "validation": "validation", "dev": "dev"}


def data_root() -> Path:
    if os.environ.get("SLIMFORMER_DATA"):
        return Path(os.environ["SLIMFORMER_DATA"])
    return Path(__file__).resolve().parent / "sets"  # package data, next to this module


def bundled_path(name: str, split: str) -> Path:
    if name not in BUNDLED:
        raise DataError(f"unknown data set {name!r}; bundled sets: {', '.join(BUNDLED)}, or pass a file path")
    splits = BUNDLED[name]
    key = split if split in splits else _SPLIT_ALIASES.get(split, split)
    if key not in splits and key == "validation" and "dev" in splits:
        key = "dev"
    if key == "dev" and "dev" not in splits and "validation" in splits:
        key = "validation"
    if key not in splits:
        raise DataError(f"{name} has no split {split!r}; its splits: {', '.join(splits)}")
    path = data_root() / splits[key]
    if not path.is_file():
        raise DataError(f"bundled file {path} is missing; reinstall slimformer, or set SLIMFORMER_DATA to a "
                        "folder holding the bundled sets (src/slimformer/data/sets in the repository)")
    return path


def resolve_data(data: str | os.PathLike, split: str) -> Path:
    """A bundled set's name, or a user's file."""
    if str(data) in BUNDLED:
        return bundled_path(str(data), split)
    path = Path(data).expanduser()
    if not path.is_file():
        raise DataError(f"{data}: no such data file; pass a file path or a bundled set ({', '.join(BUNDLED)})")
    return path
