from .masks import layer_mask, nm_mask, parse_pattern, row_mask
from .methods import magnitude_mask, sparsegpt, sparsegpt_solve, wanda_mask, wanda_score
from .owl import outlier_ratio, owl_sparsities
from .stage import PruneConfig, prune_model

__all__ = ["PruneConfig", "prune_model", "magnitude_mask", "wanda_mask", "wanda_score", "sparsegpt",
           "sparsegpt_solve", "layer_mask", "row_mask", "nm_mask", "parse_pattern", "outlier_ratio", "owl_sparsities"]
