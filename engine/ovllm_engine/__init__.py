"""ovllm's OpenVINO serving engine. Importing this package loads nothing heavy."""

from ovllm_cli import __version__

__all__ = ["__version__"]
