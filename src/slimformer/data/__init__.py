from .bundled import BUNDLED, bundled_path, data_root, resolve_data
from .readers import Pair, read_pairs, read_sentences, read_text, split_sentences, text_sentences

__all__ = ["BUNDLED", "Pair", "bundled_path", "data_root", "read_pairs", "read_sentences",
           "read_text", "resolve_data", "split_sentences", "text_sentences"]
