"""ovllm's OpenVINO serving engine. Importing this package loads nothing heavy."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ovllm")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
