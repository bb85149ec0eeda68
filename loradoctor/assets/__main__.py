"""`python -m loradoctor.assets`: build every cached artifact that is missing, and say where."""

import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from transformers.utils import logging as hf_logging  # noqa: E402

from . import BUILDERS, cache_dir  # noqa: E402

hf_logging.disable_progress_bar()  # the GGUF conversion's bar would flood CI logs

print(f"loradoctor assets in {cache_dir()}")
for name, build in BUILDERS.items():
    start = time.perf_counter()
    path = build()
    print(f"  {name:<16} {path}  ({time.perf_counter() - start:.1f}s)")
