"""Errors a user can fix. Each message says what to do; the CLI prints it on one line, exit 2."""


class SlimformerError(Exception):
    """Base class: a mistake in the input, not a bug in slimformer."""


class ModelNotFoundError(SlimformerError):
    pass


class UnsupportedModelError(SlimformerError):
    pass


class OfflineError(SlimformerError):
    pass


class DataError(SlimformerError):
    pass


class RecipeError(SlimformerError):
    pass


class ConfigValueError(SlimformerError):
    pass


class MissingDependencyError(SlimformerError):
    """An optional package a requested feature needs is not installed."""


class CorruptModelError(SlimformerError):
    """Model files that exist but cannot be used: a truncated weight file, weights holding NaN or inf,
    a pickle that would run code."""
