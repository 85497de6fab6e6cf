"""padt: grounding with visual reference tokens (Patch-as-Decodable-Token) on Qwen2.5-VL.

```python
import padt
pipe = padt.PaDTPipeline.from_pretrained("path/to/model")
out = pipe.refer("street.jpg", "the car left of the horse")
out.objects[0].box      # (x1, y1, x2, y2) in original-image pixels
```

The public names are imported on first use, so that light modules (prompts, records, the CLI's help) do not pay
for importing torch and transformers.
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("padt")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"

_EXPORTS = {
    "PaDTConfig": "padt.configuration",
    "PaDTForConditionalGeneration": "padt.modeling",
    "PaDTProcessor": "padt.processing",
    "PaDTPipeline": "padt.pipeline",
    "GroundedOutput": "padt.results",
    "GroundedObject": "padt.results",
}

__all__ = [*sorted(_EXPORTS), "__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'padt' has no attribute {name!r}")
