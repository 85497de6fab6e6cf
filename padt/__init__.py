"""padt: grounding with visual reference tokens (Patch-as-Decodable-Token) on Qwen2.5-VL and Qwen3-VL.

```python
import padt
pipe = padt.PaDTPipeline.from_pretrained("path/to/model")
out = pipe.refer("street.jpg", "the car left of the horse")
out.objects[0].box      # (x1, y1, x2, y2) in original-image pixels
```

The public names are imported on first use, so that light modules (prompts, records, the CLI's help) do not pay
for importing torch and transformers.
"""

from importlib.metadata import PackageNotFoundError, version

from padt._lazy import lazy_exports

try:
    __version__ = version("padt")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"

__getattr__, __dir__, _names = lazy_exports(
    __name__,
    {
        ".configuration": ("PaDTConfig", "PaDTQwen3VLConfig"),
        ".modeling": ("PaDTForConditionalGeneration", "PaDTQwen3VLForConditionalGeneration"),
        ".processing": ("PaDTProcessor",),
        ".pipeline": ("PaDTPipeline",),
        ".results": ("GroundedObject", "GroundedOutput"),
    },
)
__all__ = [*_names, "__version__"]
