"""slimformer: make trained Transformers smaller and faster, and measure what it costs."""
from .version import __version__

from .api import BenchConfig, bench, compress, evaluate, info, load
from .errors import SlimformerError
from .model import Model, save
from . import prune  # noqa: F401  (registers the prune stage)
from . import quant  # noqa: F401  (registers the quantize stage)
from . import trim  # noqa: F401  (registers the trim stage)
from . import recover  # noqa: F401  (registers the recover stage)

__all__ = ["BenchConfig", "Model", "SlimformerError", "bench", "compress", "evaluate", "info", "load",
           "save", "__version__"]
