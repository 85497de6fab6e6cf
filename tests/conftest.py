"""Test-wide settings: never reach a hub, keep torch deterministic and small."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

# One thread: the test models are tiny, and on a shared 2-core machine two OpenMP threads make their small
# matmuls many times slower (measured ~100x on a loaded machine).
torch.set_num_threads(1)
