"""padt: grounding with visual reference tokens (Patch-as-Decodable-Token) on Qwen2.5-VL.

```python
import padt
pipe = padt.PaDTPipeline.from_pretrained("path/to/model")
out = pipe.refer("street.jpg", "the car left of the horse")
out.objects[0].box      # (x1, y1, x2, y2) in original-image pixels
```
"""

from importlib.metadata import PackageNotFoundError, version

from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

from padt.configuration import PaDTConfig
from padt.modeling import PaDTForConditionalGeneration
from padt.pipeline import PaDTPipeline
from padt.processing import PaDTProcessor
from padt.results import GroundedObject, GroundedOutput

try:
    __version__ = version("padt")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"

# transformers' public registration API: lets Auto* classes (and AutoTokenizer reading config.json) know the
# PaDT model type. It adds entries to transformers' registries; it replaces nothing.
AutoConfig.register(PaDTConfig.model_type, PaDTConfig, exist_ok=True)
AutoModelForImageTextToText.register(PaDTConfig, PaDTForConditionalGeneration, exist_ok=True)
AutoProcessor.register(PaDTConfig, PaDTProcessor, exist_ok=True)

__all__ = [
    "GroundedObject",
    "GroundedOutput",
    "PaDTConfig",
    "PaDTForConditionalGeneration",
    "PaDTPipeline",
    "PaDTProcessor",
    "__version__",
]
