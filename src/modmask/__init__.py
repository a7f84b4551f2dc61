"""modmask: which weights of a trained network implement which function.

Differentiable binary weight masks (Csordás, van Steenkiste, Schmidhuber, ICLR 2021) on any
unmodified PyTorch model, the analysis of the masks, and the paper's case studies.
"""

from .core.analysis import (exclusive, iomin, iou, overlap_table, probability_histogram,
                            shared_fraction, stability, union)
from .core.evaluation import collect, evaluate, half_masks, inverse, split_layers
from .core.masking import masked_call
from .core.masks import Masks
from .core.memory import MemoryPlan, memory_plan
from .core.selection import select_parameters
from .core.training import MaskTrainer, TrainedMask, train_mask

from .study import Function, run_study

__version__ = "0.1.0"

__all__ = [
    "Masks", "TrainedMask", "MaskTrainer", "train_mask", "memory_plan", "MemoryPlan", "select_parameters", "masked_call", "evaluate", "collect",
    "inverse", "half_masks", "split_layers", "iou", "iomin", "shared_fraction", "exclusive", "union",
    "stability", "overlap_table", "probability_histogram", "Function", "run_study",
]
