"""Lightning callbacks, one per concept."""

from lightning_autoq.callbacks.batchnorm_lock import BatchNormLock
from lightning_autoq.callbacks.distillation import KnowledgeDistillation
from lightning_autoq.callbacks.incremental import IncrementalQuantization
from lightning_autoq.callbacks.integer_export import IntegerExport
from lightning_autoq.callbacks.oscillation import OscillationDampening, OscillationFreezing
from lightning_autoq.callbacks.precision_learning import PrecisionLearning
from lightning_autoq.callbacks.quantize import Quantize
from lightning_autoq.callbacks.scheme_search import SchemeSearch

__all__ = [
    "BatchNormLock",
    "IncrementalQuantization",
    "IntegerExport",
    "KnowledgeDistillation",
    "OscillationDampening",
    "OscillationFreezing",
    "PrecisionLearning",
    "Quantize",
    "SchemeSearch",
]
