"""What every entry point sets before loading libraries: offline, and quiet.

Nothing may reach a hub, and library chatter (progress bars, warnings) must not mix with the
report or with JSON. The CLI, the Ray tasks and the Ray entry point all start from here.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from typing import Iterator

OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}


def offline() -> None:
    """Set the offline and quiet environment variables the user has not set."""
    for key, value in OFFLINE.items():
        os.environ.setdefault(key, value)


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """`offline()`, and warnings and transformers' logging and progress bars silenced, for one
    run: the warning filters are handed back as they were found (main() called in-process, by a
    test or a notebook, leaves the caller's filters alone)."""
    with warnings.catch_warnings():
        offline()
        warnings.filterwarnings("ignore")
        try:
            from transformers.utils import logging as hf_logging
            hf_logging.set_verbosity_error()
            hf_logging.disable_progress_bar()
        except Exception:  # noqa: BLE001 - transformers missing is reported where it is needed
            pass
        yield
