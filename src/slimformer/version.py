"""slimformer's version, in one place (the package, saved folders and benchmarks read it)."""
__version__ = "0.1.1"
