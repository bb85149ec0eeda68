"""The inputs of one run, loaded lazily and measured once, shared by every rule.

`DatasetContext` serves `check-dataset`, `ModelContext` serves `check-model` and
`AdapterContext` serves `check-adapter`; the two model contexts share `ModelSource` (the base
model from a directory or the user's code, its loss convention, the probe batch, the apply
function). Each measurement that several rules read (the oracle comparison, the probe logits,
the adapters found) is computed on first use through `memo()` and kept, so a rule is cheap
once another has run. Loading problems raise `InputError` (exit 2); nothing of the user's is
written.
"""

from .adapter import AdapterContext
from .dataset import DatasetContext
from .memo import Memo
from .model import ModelContext
from .model_source import ModelSource

__all__ = ["AdapterContext", "DatasetContext", "Memo", "ModelContext", "ModelSource"]
