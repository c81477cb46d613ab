"""Lambda Learner 0.1.0's public names, on top of lljax.

Lambda Learner's README tutorial runs unchanged except for its import lines::

    from lljax.compat import (Feature, IndexMap, TrainingRecord, TrainerSequentialBayesianLogisticLossWithL2,
                              evaluate, index_domain_coeffs_to_nt_domain_coeffs,
                              nt_domain_coeffs_to_index_domain_coeffs, nt_domain_data_to_index_domain_data,
                              score_linear_model)

Every trainer here is the *same* lljax objective (see DESIGN.md) for one entity,

    f(theta) = sum_i w_i l(m_i, y_i) + 1/2 delta (theta - theta0)^T P0 (theta - theta0)
             + 1/2 (1 - delta) lambda ||theta||^2,        m = X theta + offsets,

with ``l`` the square loss (``"linear"``) or the logistic loss: the L2 trainers are
``delta = 0`` of it, the sequential Bayesian trainer uses the initial model as the prior
``(theta0, P0)``. ``loss`` and ``gradient`` are :func:`lljax.solve.objective.entity_objective`;
``train`` runs :func:`lljax.solve_block` (damped Newton with Cholesky) on a one-entity
block, padded to powers of two so that few shapes are compiled. The optimum is found to a
max-abs gradient of 1e-9 (float64) instead of L-BFGS's ``factr``/``pgtol`` stop, so it is
at least as good as Lambda Learner's.

Deliberate deviations from Lambda Learner 0.1.0 (where it is wrong, we are right):

- **Weights in every Hessian.** The logistic posterior precision is
  ``X^T diag(w s (1 - s)) X + ...``; Lambda Learner's ignores the example weights.
- **Square loss.** :class:`TrainerSquareLossWithL2` uses the weights in its loss and
  gradient (Lambda Learner ignores them) and its Hessian is ``X^T W X + lambda I``
  (Lambda Learner returns the *logistic* curvature ``X^T diag(s (1 - s)) X``, without lambda).
- **Thompson sampling.** :func:`score_linear_model` with ``exploration_threshold = t > 0``
  draws ``theta ~ N(theta, t P^-1)`` (Cholesky of the full precision ``P``, or ``1 / diag``
  for a diagonal sparse ``P``); Lambda Learner draws from ``N(theta, t diag(P))``, i.e. it
  uses the *precision* as a covariance.
- **Logistic labels** may be 0/1 or +-1 (label 1 -> +1, anything else -> -1, as
  ``TrainingRecord.label``); Lambda Learner's trainers silently misbehave on 0/1 labels.
- **Errors.** Bad input raises ``ValueError`` naming the entity (``entity=`` keyword), the
  field and the value, instead of ``assert`` failures, crashes or NaN models: mismatched
  lengths, non-finite labels/weights/offsets/features, negative weights, non-positive
  variances, unknown ``(name, term)`` keys (:class:`UnknownFeatureError`, which is also an
  ``IndexError`` as Lambda Learner's was).
- :func:`index_domain_coeffs_to_nt_domain_coeffs` returns ``(means, None)`` for a model
  without Hessian (Lambda Learner crashes).
- ``train``'s ``gradient_tolerance`` is honoured (Lambda Learner ignores it); the L-BFGS-only
  knobs ``num_corrections`` and ``precision`` are accepted and ignored.

dtype: float64 when ``jax_enable_x64`` is on. lljax never flips JAX flags: with x64 off,
compat computes in float32 throughout (and warns once); results are returned as float64
NumPy arrays either way.
"""

from __future__ import annotations

import enum
import math
import numbers
from collections.abc import Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
from scipy import sparse

from lljax.data.dataset import Dataset
from lljax.data.errors import check_finite, check_nonnegative, input_error, number_column
from lljax.data.ntv import Feature, IndexMap, TrainingRecord
from lljax.model.metrics import evaluate
from lljax.rounds.round import Round
from lljax.solve.base import SolverConfig, Status
from lljax.solve.blocks import Block
from lljax.solve.dtypes import compute_dtype
from lljax.solve.losses import first_bad_label
from lljax.solve.objective import entity_objective
from lljax.solve.registry import solve_block
from lljax.state.store import EntityStore

__all__ = [
    "Feature",
    "HessianType",
    "IndexMap",
    "IndexedDataset",
    "IndexedModel",
    "TrainerLogisticLossWithL2",
    "TrainerSequentialBayesianLogisticLossWithL2",
    "TrainerSquareLossWithL2",
    "TrainingRecord",
    "UnknownFeatureError",
    "evaluate",
    "index_domain_coeffs_to_nt_domain_coeffs",
    "nt_domain_coeffs_to_index_domain_coeffs",
    "nt_domain_data_to_index_domain_data",
    "score_linear_model",
]

# Default convergence test on the max-abs gradient, per compute dtype.
_DEFAULT_GRADIENT_TOLERANCE = {np.dtype(np.float64): 1e-9, np.dtype(np.float32): 1e-5}
# Step halvings of the Newton line search (Lambda Learner's max_linesearch is capped to this:
# 0.5 ** 60 is below float64 resolution, more halvings cannot change anything).
_MAX_BACKTRACKS = 60
# scipy's fmin_l_bfgs_b warnflag for each lljax Status.
_WARNFLAG = {Status.CONVERGED: 0, Status.STALLED: 0, Status.MAX_ITERATIONS: 1, Status.NON_FINITE: 2}

def _compute_dtype() -> np.dtype:
    """float64 if ``jax_enable_x64`` is on, else float32 (warning once per process)."""
    return compute_dtype(np.float64, caller="lljax.compat (Lambda Learner computes in float64)", once=True,
                         stacklevel=5)


class UnknownFeatureError(ValueError, IndexError):
    """A ``(name, term)`` key that the index map does not hold.

    A ``ValueError`` (lljax's convention for bad input) and an ``IndexError`` (what Lambda
    Learner's ``IndexMap.get_index`` raised), so existing ``except IndexError`` code still works.
    """


class HessianType(enum.Enum):
    """Posterior precision returned by ``train`` (Lambda Learner's members and values).

    FULL: the full posterior precision. DIAGONAL: its diagonal. IDENTITY: the identity.
    NONE: no precision (``model.hessian is None``).
    """

    FULL = 0
    DIAGONAL = 1
    IDENTITY = 2
    NONE = 4


def _as_hessian_type(value: Any) -> HessianType:
    """Accept a :class:`HessianType`, Lambda Learner's ``HessianType`` or a name like ``"full"``."""
    if isinstance(value, HessianType):
        return value
    name = value.name if isinstance(value, enum.Enum) else value
    if isinstance(name, str) and name.upper() in HessianType.__members__:
        return HessianType[name.upper()]
    raise input_error("hessian_type", value, f"is not one of {[t.name for t in HessianType]}", error=TypeError)


# ---------------------------------------------------------------------------
# Validation helpers
# ---------------------------------------------------------------------------


def _vector(field: str, values: Any, entity: Any, row_word: str = "example") -> np.ndarray:
    """``values`` as a 1-D float64 array; strings (even ``"1"``), ``None`` and complex numbers raise ``TypeError``."""
    try:
        array = np.asarray(values)
    except (TypeError, ValueError):  # ragged nesting
        raise input_error(field, _shown(values), "must be a 1-D array of numbers", entity=entity,
                          error=TypeError) from None
    if array.ndim != 1:
        raise input_error(field, f"<array of shape {array.shape}>", "must be 1-D", entity=entity)
    if array.dtype.kind not in "fiub":
        return number_column(field, array.tolist(), np.float64, lambda i: entity, f"{row_word} {{}}".format)
    return array.astype(np.float64)


def _shown(value: Any) -> Any:
    """``value`` if it prints short, else its truncated repr (for messages)."""
    text = repr(value)
    return value if len(text) <= 80 else text[:77] + "..."


def _number(field: str, value: Any, entity: Any = None, where: str | None = None) -> float:
    """A Python float from a real number; ``TypeError`` (naming the field) for strings, ``None``, etc."""
    if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "fiub":
        value = value.item()
    if not isinstance(value, numbers.Real):
        raise input_error(field, _shown(value), "must be a number", entity=entity, where=where, error=TypeError)
    try:
        return float(value)
    except OverflowError:  # an int beyond the float range
        return -math.inf if value < 0 else math.inf


def _check_real_matrix(field: str, matrix: Any, entity: Any) -> None:
    """``TypeError`` unless ``matrix`` (sparse or dense) holds real numbers."""
    dtype = matrix.dtype if sparse.issparse(matrix) else np.asarray(matrix).dtype
    if dtype.kind not in "fiub":
        raise input_error(field, f"<matrix of dtype {dtype}>", "must hold real numbers", entity=entity,
                          error=TypeError)


def _check_examples(labels: np.ndarray, weights: np.ndarray, offsets: np.ndarray, entity: Any, row_word: str) -> None:
    """Finite labels, weights and offsets; non-negative weights (LL's field names)."""
    check_finite("labels", labels, entity, row_word)
    check_finite("labels_weights", weights, entity, row_word)
    check_nonnegative("labels_weights", weights, entity, row_word)
    check_finite("offsets", offsets, entity, row_word)


def _check_matrix_finite(field: str, matrix: Any, entity: Any) -> None:
    """Raise naming the first ``(row, column)`` of ``matrix`` (sparse or dense) that is not finite."""
    coo = matrix.tocoo() if sparse.issparse(matrix) else sparse.coo_matrix(np.asarray(matrix, dtype=np.float64))
    values = np.asarray(coo.data, dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        k = int(np.argmax(bad))
        where = f"row {int(coo.row[k])}, column {int(coo.col[k])}"
        raise input_error(field, float(values[k]), "must be finite", entity=entity, where=where)


def _dense(matrix: Any) -> np.ndarray:
    return matrix.toarray() if sparse.issparse(matrix) else np.asarray(matrix)


# ---------------------------------------------------------------------------
# IndexedDataset, IndexedModel
# ---------------------------------------------------------------------------


class IndexedDataset:
    """A dataset in the index domain (Lambda Learner's ``IndexedDataset``), validated.

    Args:
      data: ``(n, d)`` design matrix, a scipy sparse matrix or a dense array; kept as passed
        (``X``).
      labels: ``(n,)`` labels (``y``); +-1 (or 0/1) for logistic, real for square loss.
      labels_weights: ``(n,)`` example weights (``w``), finite and ``>= 0``.
      offsets: ``(n,)`` fixed-effect scores, finite.
      entity: optional entity key, named in error messages.

    Raises:
      ValueError: mismatched lengths, non-finite values or negative weights; the message
        names the entity, the field (LL's argument name), the example and the value
        (Lambda Learner uses ``assert`` for lengths and checks nothing else).
      TypeError: values that are not real numbers (strings, even ``"1"``, ``None``, complex).
    """

    def __init__(self, data: Any, labels: Any, labels_weights: Any, offsets: Any, *, entity: Any = None):
        if not sparse.issparse(data) and not isinstance(data, np.ndarray):
            try:
                data = np.asarray(data)
            except ValueError:  # ragged rows
                raise input_error("data", _shown(data), "must be a 2-D matrix of numbers", entity=entity,
                                  error=TypeError) from None
        _check_real_matrix("data", data, entity)
        if len(data.shape) != 2:
            raise input_error("data", f"<array of shape {data.shape}>", "must be 2-D (examples x features)",
                              entity=entity)
        self.entity = entity
        self.X = data
        self.y = _vector("labels", labels, entity)
        self.w = _vector("labels_weights", labels_weights, entity)
        self.offsets = _vector("offsets", offsets, entity)
        self.num_rows = int(data.shape[0])
        self.num_cols = int(data.shape[1])
        self.num_examples = self.num_rows
        self.num_features = self.num_cols
        for field, values in (("labels", self.y), ("labels_weights", self.w), ("offsets", self.offsets)):
            if len(values) != self.num_rows:
                raise input_error(field, f"<array of length {len(values)}>",
                                  f"has the wrong length: expected {self.num_rows} (rows of data)", entity=entity)
        _check_examples(self.y, self.w, self.offsets, entity, "example")
        _check_matrix_finite("data", data, entity)

    def __repr__(self) -> str:
        return (f"IndexedDataset(num_examples={self.num_examples}, num_features={self.num_features}, "
                f"entity={self.entity!r})")


class IndexedModel:
    """A model in the index domain (Lambda Learner's ``IndexedModel``).

    Args:
      theta: ``(d,)`` coefficient means, or ``None`` (trainers then start from zeros).
      hessian: ``(d, d)`` precision, scipy sparse or dense, or ``None``.

    Raises:
      ValueError: ``theta`` not 1-D, ``hessian`` not ``(d, d)`` (Lambda Learner: ``assert``).
    """

    def __init__(self, theta: Any, hessian: Any = None):
        if theta is not None:
            theta = _vector("theta", theta, None, "coefficient")
        if hessian is not None:
            _check_real_matrix("hessian", hessian, None)
            if not sparse.issparse(hessian):
                hessian = np.asarray(hessian, dtype=np.float64)
            shape = tuple(hessian.shape)
            if len(shape) != 2 or shape[0] != shape[1] or (theta is not None and shape[0] != len(theta)):
                expected = "(d, d)" if theta is None else f"({len(theta)}, {len(theta)})"
                raise input_error("hessian", f"<matrix of shape {shape}>", f"must have shape {expected}")
        self.theta = theta
        self.hessian = hessian

    def __repr__(self) -> str:
        shape = None if self.hessian is None else tuple(self.hessian.shape)
        return f"IndexedModel(theta={self.theta!r}, hessian=<{type(self.hessian).__name__} {shape}>)"


# ---------------------------------------------------------------------------
# Name-term <-> index domain
# ---------------------------------------------------------------------------


def _raw_label(record: Any) -> Any:
    """The label as given (lljax's ``raw_label``, Lambda Learner's ``_label``)."""
    for attribute in ("raw_label", "_label"):
        if hasattr(record, attribute):
            return getattr(record, attribute)
    return record.label


def nt_domain_data_to_index_domain_data(records: Sequence[Any], index_map: Any, *, entity: Any = None
                                        ) -> IndexedDataset:
    """Records in name-term form -> :class:`IndexedDataset` (as Lambda Learner).

    ``X`` is a scipy CSC matrix ``(len(records), len(index_map))`` with 1.0 in the intercept
    column of every row plus the feature values (repeated keys are summed); ``y`` is
    ``record.label`` (+-1, Lambda Learner's rule, also for regression: build an
    :class:`IndexedDataset` directly for real-valued targets); ``w`` and ``offsets`` are the
    records'.

    Args:
      records: ``TrainingRecord`` objects (lljax's or Lambda Learner's).
      index_map: an ``IndexMap`` (lljax's or Lambda Learner's).
      entity: optional entity key, named in error messages.

    Raises:
      UnknownFeatureError: a feature's ``(name, term)`` is not in ``index_map`` (the message
        names the entity, the record, the field ``features`` and the key).
      ValueError: a non-finite label, weight, offset or feature value, or a negative weight.
      TypeError: a label, weight, offset or feature value that is not a number (e.g. ``"1"``).
    """
    values: list[float] = []
    rows: list[int] = []
    cols: list[int] = []
    labels: list[float] = []
    raw_labels: list[float] = []
    weights: list[float] = []
    offsets: list[float] = []
    intercept = index_map.intercept_index
    for i, record in enumerate(records):
        values.append(1.0)
        cols.append(intercept)
        rows.append(i)
        for feature in record.features:
            try:
                cols.append(index_map.get_index(feature.name_term))
            except IndexError:
                raise input_error("features", feature.name_term, "is not in the index map", entity=entity,
                                  where=f"record {i}", error=UnknownFeatureError) from None
            values.append(_number("features", feature.value, entity, f"record {i}, feature {feature.name_term!r}"))
            rows.append(i)
        raw_labels.append(_number("labels", _raw_label(record), entity, f"record {i}"))
        labels.append(record.label)
        weights.append(_number("labels_weights", record.weight, entity, f"record {i}"))
        offsets.append(_number("offsets", record.offset, entity, f"record {i}"))

    _check_examples(np.asarray(raw_labels, np.float64), np.asarray(weights, np.float64),
                    np.asarray(offsets, np.float64), entity, "record")
    value_array = np.asarray(values, np.float64)
    bad = ~np.isfinite(value_array)
    if bad.any():
        k = int(np.argmax(bad))
        name_term = index_map.get_nt(cols[k])
        raise input_error("features", (*name_term, float(value_array[k])), "has a non-finite value",
                          entity=entity, where=f"record {rows[k]}")
    X = sparse.coo_matrix((value_array, (rows, cols)), shape=(len(labels), len(index_map)), dtype=np.float64).tocsc()
    return IndexedDataset(X, labels, weights, offsets, entity=entity)


def _lookup(index_map: Any, name_term: Any, field: str) -> int:
    try:
        return index_map.get_index(name_term)
    except IndexError:
        raise input_error(field, name_term, "is not in the index map", error=UnknownFeatureError) from None


def nt_domain_coeffs_to_index_domain_coeffs(coeff_means: Iterable[Feature], coeff_variances: Iterable[Feature],
                                            index_map: Any, regularization_param: float) -> IndexedModel:
    """Name-term coefficients -> :class:`IndexedModel` with a diagonal sparse Hessian (as Lambda Learner).

    ``theta`` is 0 except for the given means; the Hessian diagonal is
    ``regularization_param`` except ``1 / variance`` for the given variances.

    Raises:
      UnknownFeatureError: a key is not in ``index_map``.
      ValueError: a non-finite mean, a variance that is not finite and > 0 (naming the
        ``(name, term)``), or a negative / non-finite ``regularization_param``.
      TypeError: a mean, variance or ``regularization_param`` that is not a number.
    """
    reg = _number("regularization_param", regularization_param)
    if not (math.isfinite(reg) and reg >= 0):
        raise input_error("regularization_param", regularization_param, "must be a finite number >= 0")
    num_features = len(index_map)
    theta = np.zeros(num_features)
    for coefficient in coeff_means:
        index = _lookup(index_map, coefficient.name_term, "coeff_means")
        value = _number("coeff_means", coefficient.value, where=f"feature {coefficient.name_term!r}")
        if not math.isfinite(value):
            raise input_error("coeff_means", value, "must be finite", where=f"feature {coefficient.name_term!r}")
        theta[index] = value
    diag_hessian = reg * np.ones(num_features)
    for coefficient in coeff_variances:
        index = _lookup(index_map, coefficient.name_term, "coeff_variances")
        value = _number("coeff_variances", coefficient.value, where=f"feature {coefficient.name_term!r}")
        if not (math.isfinite(value) and value > 0):
            raise input_error("coeff_variances", value, "must be finite and > 0",
                              where=f"feature {coefficient.name_term!r}")
        diag_hessian[index] = 1.0 / value
    return IndexedModel(theta, sparse.diags(diag_hessian).tocsc())


def index_domain_coeffs_to_nt_domain_coeffs(model: Any, index_map: Any
                                            ) -> tuple[dict[Any, float], dict[Any, float] | None]:
    """:class:`IndexedModel` -> ``(means, variances)`` dicts keyed by ``(name, term)`` (as Lambda Learner).

    Variances are ``1 / diag(hessian)`` (only the diagonal is kept, as in Lambda Learner).
    Deviation: a model without Hessian gives ``(means, None)`` (Lambda Learner crashes).

    Raises:
      ValueError: ``len(model.theta) != len(index_map)``, or a non-finite ``theta``.
    """
    theta = np.asarray(model.theta)
    if theta.ndim != 1 or len(theta) != len(index_map):
        raise input_error("theta", f"<array of shape {theta.shape}>",
                          f"must have one coefficient per index map entry ({len(index_map)})")
    check_finite("theta", theta, None, "coefficient")
    name_terms = [index_map.get_nt(i) for i in range(len(index_map))]
    means = {name_term: theta[i] for i, name_term in enumerate(name_terms)}
    if model.hessian is None:
        return means, None
    diagonal = model.hessian.diagonal() if sparse.issparse(model.hessian) else np.diagonal(model.hessian)
    with np.errstate(divide="ignore"):
        inverse = 1.0 / np.asarray(diagonal, dtype=np.float64)
    return means, {name_term: inverse[i] for i, name_term in enumerate(name_terms)}


# ---------------------------------------------------------------------------
# Trainers
# ---------------------------------------------------------------------------


def _positive_int(field: str, value: Any) -> int:
    if not (isinstance(value, numbers.Integral) and not isinstance(value, bool) and int(value) >= 1):
        raise input_error(field, value, "must be an int >= 1")
    return int(value)


class _NewtonTrainer:
    """One-entity trainer on lljax's objective (shared by the three public trainers).

    Subclasses set ``_loss_name``; ``delta`` is 0 for the L2 trainers.
    """

    _loss_name = "logistic"

    def __init__(self, *, training_data: Any, initial_model: Any, hessian_type: Any, penalty: float, delta: float):
        if not isinstance(training_data, IndexedDataset):  # e.g. Lambda Learner's: validate it
            if not all(hasattr(training_data, a) for a in ("X", "y", "w", "offsets")):
                raise input_error("training_data", type(training_data).__name__,
                                  "must be an IndexedDataset (X, y, w, offsets)", error=TypeError)
            training_data = IndexedDataset(training_data.X, training_data.y, training_data.w, training_data.offsets)
        entity = training_data.entity
        if not (hasattr(initial_model, "theta") and hasattr(initial_model, "hessian")):
            raise input_error("initial_model", type(initial_model).__name__,
                              "must be an IndexedModel (theta, hessian)", entity=entity, error=TypeError)
        penalty_value = _number("penalty", penalty, entity)
        if not (math.isfinite(penalty_value) and penalty_value >= 0):
            raise input_error("penalty", penalty, "must be a finite number >= 0", entity=entity)
        delta_value = _number("delta", delta, entity)
        if not 0.0 <= delta_value <= 1.0:
            raise input_error("delta", delta, "must be a number in [0, 1]", entity=entity)
        self.hessian_type = _as_hessian_type(hessian_type)
        D = training_data.num_features
        theta0, hessian0 = initial_model.theta, initial_model.hessian
        if theta0 is not None and len(theta0) != D:
            raise input_error("initial_model.theta", f"<array of length {len(theta0)}>",
                              f"must have one coefficient per feature ({D})", entity=entity)
        if theta0 is None or hessian0 is None:  # Lambda Learner's defaults
            theta0 = np.zeros(D) if theta0 is None else theta0
            hessian0 = sparse.diags(np.full(D, penalty_value)).tocsc() if hessian0 is None else hessian0
            initial_model = IndexedModel(theta0, hessian0)
        elif not isinstance(initial_model, IndexedModel):
            initial_model = IndexedModel(theta0, hessian0)
        check_finite("initial_model.theta", initial_model.theta, entity, "coefficient")
        bad = first_bad_label(self._loss_name, training_data.y) if self._loss_name == "logistic" else None
        if bad is not None:
            i, reason = bad
            raise input_error("labels", float(training_data.y[i]), reason, entity=entity, where=f"example {i}")

        self.data = training_data
        self.initial_model = initial_model
        self.param_reg = penalty_value
        self.param_delta = delta_value
        self.param_lambda = sparse.diags(np.full(D, penalty_value)).tocsc()
        self._dtype = _compute_dtype()
        self._num_features = D
        self._cache: tuple[bytes, float, np.ndarray] | None = None
        self._block = self._pack(entity)

    def _prior_precision(self, entity: Any) -> np.ndarray:
        """``(D, D)`` dense prior precision P0 (the L2 trainers ignore it: delta = 0)."""
        return np.zeros((self._num_features, self._num_features))

    def _pack(self, entity: Any) -> Block:
        """The one-entity block, packed by the core (:class:`lljax.rounds.round.Round`) as
        :meth:`lljax.RandomEffectModel.update` packs it: the data as a one-entity :class:`lljax.Dataset`
        (no implicit intercept: Lambda Learner's columns are the features), the prior (``theta0``, ``P0``)
        as a stored entity of a full-precision store. The entity's subspace is then every feature
        ``0..d-1``, in order, padded as the core pads."""
        n, D = self.data.num_rows, self._num_features
        csr = sparse.csr_matrix(self.data.X, dtype=np.float64)
        csr.sort_indices()
        dataset = Dataset.from_arrays(np.zeros(n, np.int64), self.data.y, indptr=csr.indptr, feature_ids=csr.indices,
                                      values=csr.data, weight=self.data.w, offset=self.data.offsets,
                                      num_features=max(D, 1), intercept_id=None, dtype=self._dtype)
        store = EntityStore(self._dtype, "full")
        theta0 = np.asarray(self.initial_model.theta)
        store.write(np.zeros(1, np.int64), np.full(1, -1), np.arange(D)[None], theta0[None],
                    self._prior_precision(entity)[None])
        work = Round.prepare(dataset, self._loss_name, store, self.param_reg)
        config = SolverConfig(loss=self._loss_name, hessian="full")
        (plan,) = work.plan(1 << 62, config)
        block = work.build(plan._replace(lanes=1, layout=None))  # the dense block itself (for its objective)
        assert isinstance(block, Block), "a full-precision plan has the dense layout"
        return block

    def _scalars(self) -> tuple[jax.Array, jax.Array]:
        return jnp.asarray(self.param_reg, self._dtype), jnp.asarray(self.param_delta, self._dtype)

    def _pad_theta(self, theta: Any) -> jax.Array:
        theta = jnp.asarray(theta, self._dtype)
        if theta.shape != (self._num_features,):
            raise input_error("theta", f"<array of shape {theta.shape}>", f"must have shape ({self._num_features},)",
                              entity=self.data.entity)
        return jnp.pad(theta, (0, self._block.X.shape[2] - self._num_features))

    def _value_and_grad(self, theta: Any) -> tuple[jax.Array, jax.Array]:
        """Objective and ``(D,)`` gradient at ``theta`` (JAX arrays; differentiable in ``theta``)."""
        lane = tuple(jnp.asarray(a[0]) for a in self._block)
        value, grad = entity_objective(self._pad_theta(theta), *lane, *self._scalars(), loss=self._loss_name)
        return value, grad[: self._num_features]

    def _objective(self, theta: Any) -> jax.Array:
        """The objective as a JAX scalar (for ``jax.grad`` / ``jax.hessian``)."""
        return self._value_and_grad(theta)[0]

    def _evaluate(self, theta: Any) -> tuple[float, np.ndarray]:
        key = np.asarray(theta, np.float64).tobytes()
        if self._cache is None or self._cache[0] != key:  # loss and gradient come in pairs: compute once
            value, grad = self._value_and_grad(theta)
            self._cache = (key, float(value), np.asarray(grad, np.float64))
        return self._cache[1], self._cache[2].copy()

    def loss(self, theta: np.ndarray) -> float:
        """Objective value at ``theta`` (data loss + penalty), computed by lljax's solver functions."""
        return self._evaluate(theta)[0]

    def gradient(self, theta: np.ndarray) -> np.ndarray:
        """``(d,)`` gradient of :meth:`loss` at ``theta``."""
        return self._evaluate(theta)[1]

    def train(
        self,
        max_iterations: int = 15000,
        max_funcalls: int = 15000,
        max_linesearch: int = 15000,
        num_corrections: int = 10,
        precision: float = 1e7,
        gradient_tolerance: float | None = None,
    ) -> tuple[IndexedModel, float, dict[str, Any]]:
        """Minimize :meth:`loss` by damped Newton (:func:`lljax.solve_block`); update the Hessian.

        Args:
          max_iterations: Newton iteration cap (with ``max_funcalls``: the smaller one, as each
            iteration evaluates the function at least once).
          max_funcalls: see ``max_iterations``.
          max_linesearch: step halvings per line search, capped at 60.
          num_corrections: L-BFGS only; accepted and ignored.
          precision: L-BFGS ``factr``; accepted and ignored.
          gradient_tolerance: stop when the max-abs gradient is ``<=`` this; default 1e-9 in
            float64 and 1e-5 in float32 (Lambda Learner accepts it but ignores it).

        Returns:
          ``(model, loss, metadata)``: the trained :class:`IndexedModel` (Hessian per
          ``hessian_type``: FULL the full posterior precision as scipy CSC, DIAGONAL its diagonal
          as a sparse diagonal matrix, IDENTITY the sparse identity, NONE ``None``), the objective
          at its ``theta``, and scipy-like metadata:

          - ``warnflag``: 0 converged (``Status.CONVERGED``) or stalled at the numerical floor
            before the tolerance (``Status.STALLED``: no step decreases the objective any more);
            1 iteration cap reached (``Status.MAX_ITERATIONS``, the last iterate is returned);
            2 non-finite numbers (``Status.NON_FINITE``): the *initial model* is returned, as
            Lambda Learner does on ``warnflag == 2``;
          - ``task``: the :class:`lljax.Status` name, e.g. ``"CONVERGED"``;
          - ``nit``: Newton iterations;
          - ``grad``: ``(d,)`` gradient at the returned ``theta``.
        """
        max_iter = min(_positive_int("max_iterations", max_iterations), _positive_int("max_funcalls", max_funcalls))
        backtracks = min(_positive_int("max_linesearch", max_linesearch), _MAX_BACKTRACKS)
        tol = (_DEFAULT_GRADIENT_TOLERANCE[self._dtype] if gradient_tolerance is None
               else _number("gradient_tolerance", gradient_tolerance, self.data.entity))
        if not (math.isfinite(tol) and tol >= 0):
            raise input_error("gradient_tolerance", gradient_tolerance, "must be a finite number >= 0")
        # Always the full precision: one compiled solver per (loss, shape); the form asked for
        # is cut from it on the host.
        config = SolverConfig(loss=self._loss_name, hessian="full", max_iter=max_iter, tol=tol,
                              max_backtracks=backtracks)
        result = jax.device_get(solve_block(self._block, *self._scalars(), config))
        D = self._num_features
        status = Status(int(result.status[0]))
        theta = np.asarray(result.theta[0, :D], np.float64)
        trained_loss = float(result.loss[0])
        metadata = {
            "warnflag": _WARNFLAG[status],
            "task": status.name,
            "nit": int(result.iterations[0]),
            "grad": self.gradient(theta),
        }
        if status == Status.NON_FINITE:
            return self.initial_model, trained_loss, metadata
        full = np.asarray(result.precision[0, :D, :D], np.float64)
        return IndexedModel(theta, self._hessian_in_form(full)), trained_loss, metadata

    def _hessian_in_form(self, full: np.ndarray) -> sparse.spmatrix | None:
        if self.hessian_type == HessianType.FULL:
            return sparse.csc_matrix(full)
        if self.hessian_type == HessianType.DIAGONAL:
            return sparse.diags(np.diagonal(full).copy()).tocsc()
        if self.hessian_type == HessianType.IDENTITY:
            return sparse.identity(full.shape[0], format="csc")
        return None


class _L2Trainer(_NewtonTrainer):
    """The plain-L2 trainers: the shared objective with ``delta = 0`` (Lambda Learner's signature)."""

    def __init__(self, *, training_data: IndexedDataset, initial_model: IndexedModel,
                 hessian_type: HessianType = HessianType.NONE, penalty: float = 0.0):
        super().__init__(training_data=training_data, initial_model=initial_model, hessian_type=hessian_type,
                         penalty=penalty, delta=0.0)


class TrainerSquareLossWithL2(_L2Trainer):
    """Linear regression with L2: ``1/2 sum_i w_i (x_i theta + o_i - y_i)^2 + 1/2 penalty ||theta||^2``.

    Same arguments as Lambda Learner (keyword-only): ``training_data``, ``initial_model``
    (its ``theta`` is the starting point; its Hessian is unused), ``hessian_type``
    (default NONE), ``penalty`` (default 0.0).

    Deviations from Lambda Learner: the weights ``w`` are used (Lambda Learner ignores them),
    and the posterior Hessian is ``X^T W X + penalty I`` (Lambda Learner returns the logistic
    curvature ``X^T diag(s (1 - s)) X`` without the penalty).
    """

    _loss_name = "linear"


class TrainerLogisticLossWithL2(_L2Trainer):
    """Logistic regression with L2: ``sum_i w_i log(1 + exp(-y_i m_i)) + 1/2 penalty ||theta||^2``.

    Same arguments as Lambda Learner (keyword-only): ``training_data``, ``initial_model``
    (its ``theta`` is the starting point; its Hessian is unused), ``hessian_type``
    (default NONE), ``penalty`` (default 0.0). Labels: 1 -> +1, anything else (0, -1) -> -1.

    Deviation from Lambda Learner: the posterior Hessian ``X^T diag(w s (1 - s)) X + penalty I``
    uses the weights (Lambda Learner's ignores them).
    """

    _loss_name = "logistic"


class TrainerSequentialBayesianLogisticLossWithL2(_NewtonTrainer):
    """Sequential Bayesian logistic regression (the Lambda Learner paper).

    Objective: ``sum_i w_i log(1 + exp(-y_i m_i)) + 1/2 delta (theta - theta0)^T P0 (theta - theta0)
    + 1/2 (1 - delta) penalty ||theta||^2`` with the prior ``theta0 = initial_model.theta`` and
    ``P0 = initial_model.hessian`` (densified; full or diagonal). Posterior precision:
    ``X^T diag(w s (1 - s)) X + delta P0 + (1 - delta) penalty I``.

    Same arguments as Lambda Learner (keyword-only): ``training_data``, ``initial_model``,
    ``hessian_type`` (default FULL), ``penalty`` (default 0.0), ``delta`` (forgetting factor in
    [0, 1], default 0.8). Missing ``theta`` / ``hessian`` default to zeros / ``penalty * I``.

    Deviation from Lambda Learner: the posterior Hessian uses the weights (Lambda Learner's
    ignores them). ``P0`` must be finite, symmetric (it is symmetrized to remove rounding) and
    positive semi-definite.
    """

    _loss_name = "logistic"

    def __init__(self, *, training_data: IndexedDataset, initial_model: IndexedModel,
                 hessian_type: HessianType = HessianType.FULL, penalty: float = 0.0, delta: float = 0.8):
        super().__init__(training_data=training_data, initial_model=initial_model, hessian_type=hessian_type,
                         penalty=penalty, delta=delta)

    def _prior_precision(self, entity: Any) -> np.ndarray:
        P0 = np.asarray(_dense(self.initial_model.hessian), np.float64)
        _check_matrix_finite("initial_model.hessian", P0, entity)
        asymmetry = np.max(np.abs(P0 - P0.T), initial=0.0)
        if asymmetry > 1e-8 * max(np.max(np.abs(P0), initial=0.0), 1e-300):
            raise input_error("initial_model.hessian", f"<matrix with max |P - P^T| = {asymmetry:.3g}>",
                              "must be symmetric", entity=entity)
        P0 = 0.5 * (P0 + P0.T)
        if P0.size:
            eigenvalues = np.linalg.eigvalsh(P0)
            if eigenvalues[0] < -1e-10 * max(abs(eigenvalues[-1]), 1e-300):
                raise input_error("initial_model.hessian", f"<matrix with smallest eigenvalue {eigenvalues[0]:.3g}>",
                                  "must be positive semi-definite (it is a precision)", entity=entity)
        return P0


# ---------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------


def _is_diagonal_sparse(matrix: Any) -> bool:
    if not sparse.issparse(matrix):
        return False
    coo = matrix.tocoo()
    return bool(np.all((coo.row == coo.col) | (coo.data == 0)))


def _sample_coefficients(model: Any, exploration_threshold: float, rng: np.random.Generator,
                         size: int | None = None) -> np.ndarray:
    """Draws of ``theta ~ N(model.theta, exploration_threshold * P^-1)`` with ``P = model.hessian``.

    Diagonal sparse ``P``: ``theta + sqrt(t / diag P) z``. Otherwise ``P = L L^T`` (Cholesky)
    and ``theta + sqrt(t) L^-T z``, whose covariance is ``t (L L^T)^-1``.

    Returns:
      ``(d,)`` if ``size`` is None, else ``(size, d)``.

    Raises:
      ValueError: ``P`` is not positive definite (a diagonal entry <= 0 for diagonal ``P``).
    """
    theta = np.asarray(model.theta, np.float64)
    d = len(theta)
    z = rng.standard_normal(d if size is None else (size, d))
    P = model.hessian
    if _is_diagonal_sparse(P):
        diagonal = np.asarray(P.diagonal(), np.float64)
        bad = ~(np.isfinite(diagonal) & (diagonal > 0))
        if bad.any():
            i = int(np.argmax(bad))
            raise input_error("hessian", float(diagonal[i]), "must be finite and > 0 on the diagonal for exploration",
                              where=f"coefficient {i}")
        return theta + np.sqrt(exploration_threshold / diagonal) * z
    dense = np.asarray(_dense(P), np.float64)
    dense = 0.5 * (dense + dense.T)
    try:
        L = np.linalg.cholesky(dense)
    except np.linalg.LinAlgError:
        raise input_error("hessian", f"<{d}x{d} matrix>", "must be positive definite for exploration") from None
    if not np.all(np.isfinite(L)):
        raise input_error("hessian", f"<{d}x{d} matrix>", "must be finite and positive definite for exploration")
    noise = scipy.linalg.solve_triangular(L.T, np.atleast_2d(z).T, lower=False).T
    samples = theta + math.sqrt(exploration_threshold) * noise
    return samples[0] if size is None else samples


def score_linear_model(model: Any, test_data: Any, exploration_threshold: float = 0, *,
                       rng: np.random.Generator | int | None = None) -> np.ndarray:
    """Scores ``X theta + offsets``, optionally with Thompson-sampled coefficients.

    Args:
      model: the model (``theta``, and ``hessian`` when exploring).
      test_data: an :class:`IndexedDataset` (or Lambda Learner's).
      exploration_threshold: ``t >= 0``; ``t > 0`` scores with one draw
        ``theta ~ N(model.theta, t * hessian^-1)``.
      rng: a ``numpy.random.Generator`` or a seed (``None``: fresh entropy).

    Deviation from Lambda Learner: Lambda Learner draws ``theta ~ N(theta, t * diag(hessian))``,
    i.e. it uses the precision's diagonal as a covariance; here the covariance is the inverse
    of the precision (full via Cholesky, or ``1 / diag`` for a diagonal sparse Hessian).

    Raises:
      ValueError: ``exploration_threshold < 0`` or non-finite; exploring without a Hessian;
        ``theta`` and ``X`` of different widths; a non-finite ``theta``; a Hessian that is not
        positive definite.
      TypeError: ``exploration_threshold`` that is not a number.
    """
    threshold = _number("exploration_threshold", exploration_threshold)
    if not math.isfinite(threshold):
        raise input_error("exploration_threshold", exploration_threshold, "must be finite")
    if threshold != 0:
        if threshold < 0:
            raise input_error("exploration_threshold", exploration_threshold, "must be non-negative")
        if model.hessian is None:
            raise input_error("hessian", None, "must be available to perform exploration (exploration_threshold > 0)")
    theta = np.asarray(model.theta, np.float64)
    if theta.ndim != 1 or theta.shape[0] != test_data.X.shape[1]:
        raise input_error("theta", f"<array of shape {theta.shape}>",
                          f"must have one coefficient per column of X ({test_data.X.shape[1]})")
    check_finite("theta", theta, None, "coefficient")
    if threshold != 0:
        theta = _sample_coefficients(model, threshold, np.random.default_rng(rng))
    scores = test_data.X @ theta
    return np.asarray(scores, np.float64).reshape(-1) + np.asarray(test_data.offsets, np.float64)
