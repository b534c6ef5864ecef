"""revo mesh: engines as plugins in actor nodes, served over NATS and gRPC."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("revo-mesh")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
