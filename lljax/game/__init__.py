"""GAME models: a fixed effect plus random-effect coordinates, trained by block coordinate descent.

Public surface:

- data: :class:`GameData` (entity columns, feature sets, score columns), :class:`FeatureSet`,
  :class:`GameInputError`;
- coordinates: :class:`FixedEffect`, :class:`RandomEffect`, :class:`ExternalScore`,
  :class:`FixedEffectState`;
- the model: :class:`GameModel` (``fit``, ``score``, ``predict``, ``update``, ``run_stream``, ``save``,
  ``load``, ``to_tables``), :class:`GameScores`;
- reports: :class:`GameReport`, :class:`StepRecord`, :class:`GameStreamReport`, :class:`WindowRecord`;
- data sets: :mod:`lljax.game.movielens` (MovieLens-100k as in GDMix's example).
"""

from lljax.game.coordinates import ExternalScore, FixedEffect, FixedEffectState, RandomEffect
from lljax.game.data import FeatureSet, GameData, GameInputError
from lljax.game.model import GameModel, GameScores
from lljax.game.report import GameReport, GameStreamReport, StepRecord, WindowRecord

__all__ = [
    "ExternalScore",
    "FeatureSet",
    "FixedEffect",
    "FixedEffectState",
    "GameData",
    "GameInputError",
    "GameModel",
    "GameReport",
    "GameScores",
    "GameStreamReport",
    "RandomEffect",
    "StepRecord",
    "WindowRecord",
]
