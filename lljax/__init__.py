"""lljax: batched training of GAME random effects in JAX.

Thousands to millions of small per-entity linear, logistic and Poisson models (optionally
sequential Bayesian, with the previous posterior as prior) trained at once on CPU or GPU,
on top of a fixed-effect model's offset score. The batched successor of Lambda Learner;
``lljax.compat`` speaks Lambda Learner's names.

Public surface:

- data: :class:`Dataset`, :class:`Feature`, :class:`TrainingRecord`, :class:`IndexMap`,
  :func:`read_ntv_jsonl`, :func:`iter_ntv_jsonl`, :func:`write_ntv_jsonl`;
- training: :class:`RandomEffectModel`, :class:`UpdateReport`, :class:`Status`,
  :class:`EntityCoefficients`;
- metrics: :func:`auc`, :func:`rmse`, :func:`log_loss`, :func:`evaluate`;
- low level (one block, pure JAX): :class:`Block`, :class:`SolverConfig`, :class:`SolveResult`,
  :func:`solve_block`.
"""

from ._dataset import Dataset
from ._metrics import auc, evaluate, log_loss, rmse
from ._model import RandomEffectModel
from ._ntv import Feature, IndexMap, TrainingRecord, iter_ntv_jsonl, read_ntv_jsonl, write_ntv_jsonl
from ._report import UpdateReport
from ._solve import Block, SolverConfig, SolveResult, Status, solve_block
from ._store import EntityCoefficients

__version__ = "0.1.0"

__all__ = [
    "Block",
    "Dataset",
    "EntityCoefficients",
    "Feature",
    "IndexMap",
    "RandomEffectModel",
    "SolveResult",
    "SolverConfig",
    "Status",
    "TrainingRecord",
    "UpdateReport",
    "auc",
    "evaluate",
    "iter_ntv_jsonl",
    "log_loss",
    "read_ntv_jsonl",
    "rmse",
    "solve_block",
    "write_ntv_jsonl",
]
