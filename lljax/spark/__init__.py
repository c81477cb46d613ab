"""lljax on Spark: random effects and GAME coordinate descent on Spark DataFrames.

The same pack -> solve -> unpack pipeline as :meth:`lljax.RandomEffectModel.update`, inside Spark tasks:

- the examples (and, for an incremental update, the previous state) are repartitioned by entity
  (``repartition(P, entity)``), so every task holds whole entities and their priors;
- each task receives its partition as Arrow batches (``mapInArrow``: one Python call per partition, never
  one per entity), builds one :class:`lljax.Dataset` and runs one batched update;
- the result is a *state*: a DataFrame with one row per entity (``entity``, ``feature_ids``, ``names``,
  ``terms``, ``means``, ``precision``) plus its metadata (:class:`StateInfo`: hyper-parameters, index
  map, format version), written to and read from Parquet (:func:`write_state`, :func:`read_state`).

Public API: :class:`Features` (how the features are given), :class:`Columns` (which columns hold what),
:func:`update` (train or update a coordinate), :func:`score` (mean, Thompson and UCB scores),
:func:`fit_game` (GAME coordinate descent), :class:`SparkState`, :func:`read_state`, :func:`write_state`,
:class:`SparkReport` (every task's statuses, counts and times added up).

The modules, each with one job:

- :mod:`lljax.spark.columns`: :class:`Columns`, :class:`Features`, the driver's checks of the columns and
  the feature space (index map) they span;
- :mod:`lljax.spark.convert`: Arrow <-> lljax in the tasks (rows -> :class:`lljax.Dataset`, state rows ->
  stored posteriors and back), vectorized;
- :mod:`lljax.spark.state`: :class:`SparkState`, :class:`StateInfo`, Parquet read and atomic write;
- :mod:`lljax.spark.job`: the driver side shared by the jobs (checks, task spec, data and state in one
  shuffle);
- :mod:`lljax.spark.random_effect`: :func:`update`; :mod:`lljax.spark.scoring`: :func:`score`;
  :mod:`lljax.spark.game`: :func:`fit_game`;
- :mod:`lljax.spark.report`: :class:`SparkReport`; :mod:`lljax.spark.worker`: the Python worker's setup;
  :mod:`lljax.spark.errors`: input errors that name the column and the value.

Results equal single-process lljax on the same data (each entity is solved by the same code on the same
rows, in the same order; only the blocks it shares differ, and padding never changes a result).

float64: the workers follow the driver. When the driver has ``jax_enable_x64`` on, tasks turn it on in
their own (Python worker) process before solving, and use the driver's JAX compilation cache directory if
one is set; nothing else is changed. See ``docs/spark.md`` for running on a cluster.
"""

from lljax.spark.columns import Columns, Features
from lljax.spark.game import GameResult, RandomEffectSpec, fit_game
from lljax.spark.random_effect import update
from lljax.spark.report import SparkReport
from lljax.spark.scoring import explore_scores as explore_scores  # public outside __all__, as before the package
from lljax.spark.scoring import score
from lljax.spark.state import FORMAT_NAME, FORMAT_VERSION, SparkState, StateInfo, read_state, write_state
from lljax.spark.state import METADATA_FILE as METADATA_FILE  # public outside __all__, as before the package

__all__ = ["Columns", "Features", "GameResult", "RandomEffectSpec", "SparkReport", "SparkState", "StateInfo",
           "FORMAT_NAME", "FORMAT_VERSION", "fit_game", "read_state", "score", "update", "write_state"]

