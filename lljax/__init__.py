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
- streams: :func:`run_stream` (progressive validation), :class:`StreamReport`, :class:`WindowResult`;
- persistence: :meth:`RandomEffectModel.save` / :meth:`RandomEffectModel.load`, :class:`ModelFileError`;
- exploration (pure JAX, explicit keys): :class:`Posterior` (from :meth:`RandomEffectModel.posterior`),
  :func:`thompson_arms`, :func:`thompson_candidates`, :func:`ucb_arms`, :func:`ucb_candidates`,
  :func:`arm_moments`, :func:`candidate_moments`, :func:`sample_posterior`, :func:`top_k`;
- simulation: the module :mod:`lljax.bandit` (``python -m lljax.bandit``): Thompson sampling, UCB,
  greedy and random on simulated users, with cumulative regret;
- metrics: :func:`auc`, :func:`rmse`, :func:`log_loss`, :func:`evaluate`;
- low level (one block, pure JAX): :class:`Block`, :class:`SolverConfig`, :class:`SolveResult`,
  :func:`solve_block`.
"""

from lljax.data.dataset import Dataset
from lljax.data.frames import (
    coefficients_frame,
    dataset_from_frame,
    dataset_from_ntv_jsonl,
    dataset_from_parquet,
    report_frame,
    stream_frame,
)
from lljax.data.ntv import Feature, IndexMap, TrainingRecord, iter_ntv_jsonl, read_ntv_jsonl, write_ntv_jsonl
from lljax.estimator import RandomEffectClassifier, RandomEffectRegressor
from lljax.explore.arms import LinearArms
from lljax.explore.scoring import (
    Posterior,
    arm_moments,
    candidate_moments,
    sample_posterior,
    thompson_arms,
    thompson_candidates,
    top_k,
    ucb_arms,
    ucb_candidates,
)
from lljax.game import ExternalScore, FixedEffect, GameData, GameModel, RandomEffect
from lljax.model.metrics import auc, evaluate, log_loss, rmse
from lljax.model.random_effect import RandomEffectModel
from lljax.model.report import StatusCounts, UpdateReport
from lljax.model.stream import StreamReport, WindowResult, run_stream
from lljax.solve.base import SolverConfig, SolveResult, Status
from lljax.solve.blocks import Block
from lljax.solve.registry import solve_block
from lljax.state.persist import ModelFileError
from lljax.state.store import EntityCoefficients
from lljax.version import __version__ as __version__

__all__ = [
    "Block",
    "Dataset",
    "EntityCoefficients",
    "ExternalScore",
    "Feature",
    "FixedEffect",
    "GameData",
    "GameModel",
    "IndexMap",
    "LinearArms",
    "ModelFileError",
    "Posterior",
    "RandomEffect",
    "RandomEffectModel",
    "SolveResult",
    "SolverConfig",
    "Status",
    "StreamReport",
    "TrainingRecord",
    "UpdateReport",
    "WindowResult",
    "arm_moments",
    "auc",
    "candidate_moments",
    "evaluate",
    "iter_ntv_jsonl",
    "log_loss",
    "read_ntv_jsonl",
    "rmse",
    "run_stream",
    "sample_posterior",
    "solve_block",
    "thompson_arms",
    "thompson_candidates",
    "top_k",
    "ucb_arms",
    "ucb_candidates",
    "write_ntv_jsonl",
    "RandomEffectClassifier",
    "RandomEffectRegressor",
    "StatusCounts",
    "coefficients_frame",
    "dataset_from_frame",
    "dataset_from_ntv_jsonl",
    "dataset_from_parquet",
    "report_frame",
    "stream_frame",
]
