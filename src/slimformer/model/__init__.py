from .arch import ArchMap, AttentionMap, BlockMap, FFNMap, get_module, set_module
from .load import load
from .model import Model, Pooling
from .save import save

__all__ = ["ArchMap", "AttentionMap", "BlockMap", "FFNMap", "Model", "Pooling",
           "get_module", "set_module", "load", "save"]
