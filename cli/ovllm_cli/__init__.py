"""The `ovllm` command shared by every role's image. It imports nothing but the standard library:
each subcommand's module (and so its role's dependencies) is imported only when that subcommand runs."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ovllm")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
