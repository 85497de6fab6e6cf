"""padt: grounding with visual reference tokens (Patch-as-Decodable-Token) on Qwen2.5-VL."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("padt")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"
