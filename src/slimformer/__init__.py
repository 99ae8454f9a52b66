"""slimformer: make trained Transformers smaller and faster, and measure what it costs."""
__version__ = "0.1.0"

from .api import BenchConfig, bench, compress, evaluate, info, load  # noqa: E402
from .errors import SlimformerError  # noqa: E402
from .model import Model, save  # noqa: E402
from . import prune  # noqa: E402,F401  (registers the prune stage)
from . import quant  # noqa: E402,F401  (registers the quantize stage)
from . import trim  # noqa: E402,F401  (registers the trim stage)
from . import recover  # noqa: E402,F401  (registers the recover stage)

__all__ = ["BenchConfig", "Model", "SlimformerError", "bench", "compress", "evaluate", "info", "load",
           "save", "__version__"]
