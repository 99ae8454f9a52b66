"""slimformer: make trained Transformers smaller and faster, and measure what it costs."""
from .version import __version__

from .api import BenchConfig, bench, compress, evaluate, info, load, tune
from .errors import SlimformerError
from .model import Model, save
from . import prune  # noqa: F401  (registers the prune stage)
from . import quant  # noqa: F401  (registers the quantize stage)
from . import trim  # noqa: F401  (registers the trim stage)
from . import recover  # noqa: F401  (registers the recover stage)
from .tune import TuneConfig

__all__ = ["BenchConfig", "Model", "TuneConfig", "SlimformerError", "bench", "compress", "evaluate", "info", "load",
           "save", "tune", "__version__"]
