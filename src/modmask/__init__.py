"""modmask: which weights of a trained network implement which function.

Differentiable binary weight masks (Csordás, van Steenkiste, Schmidhuber, ICLR 2021) on any
unmodified PyTorch model, the analysis of the masks, and the paper's case studies.
"""

from .core.analysis import (check_comparable, exclusive, iomin, iou, overlap_chance, overlap_matrix,
                            overlap_table, probability_histogram, shared_fraction, shared_fraction_chance,
                            stability, union)
from .core.baselines import BASELINES, importance
from .core.curves import DENSITIES, CurveConfig, density_curves
from .core.evaluation import collect, evaluate, half_masks, inverse, random_control, split_layers
from .core.export import export_pruned, mib_circuit, node_scores, pruned_parameters
from .core.masking import masked_call
from .core.mask_config import Execution, MaskConfig
from .core.masks import Masks, random_masks, top_masks
from .core.objectives import kl_to_full, with_full_outputs
from .core.memory import MemoryPlan, memory_plan
from .core.stats import mean_std_text, summarize
from .core.selection import select_parameters
from .core.structure import Slice, UnitSet, attention_heads, mlp_neurons
from .core.trained import TrainedMask
from .core.training import MaskTrainer, train_mask, train_masks

from .study import Function, run_study

__version__ = "0.1.0"

__all__ = [
    "Masks", "MaskConfig", "Execution", "TrainedMask", "MaskTrainer", "train_mask", "train_masks", "memory_plan", "MemoryPlan", "select_parameters",
    "masked_call", "evaluate", "collect",
    "inverse", "half_masks", "split_layers", "iou", "iomin", "shared_fraction", "exclusive", "union",
    "stability", "overlap_table", "probability_histogram", "Function", "run_study",
    "overlap_chance", "overlap_matrix", "shared_fraction_chance", "check_comparable", "random_masks", "top_masks",
    "random_control", "summarize", "mean_std_text", "importance", "BASELINES",
    "kl_to_full", "with_full_outputs", "CurveConfig", "density_curves", "DENSITIES",
    "Slice", "UnitSet", "attention_heads", "mlp_neurons",
    "export_pruned", "pruned_parameters", "node_scores", "mib_circuit",
]
