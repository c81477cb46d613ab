"""scikit-learn-style estimators: per-group GLMs (random effects) with ``fit``/``partial_fit``/``predict``.

:class:`RandomEffectClassifier` (logistic) and :class:`RandomEffectRegressor` (linear or Poisson) fit one
L2-penalized GLM per group (entity) of the rows, all at once, with :class:`RandomEffectModel`. They follow
scikit-learn's conventions (constructor arguments stored as given, ``get_params``/``set_params``, fitted
attributes ending in ``_``), so that ``sklearn.base.clone``, pipelines and grid searches work, without
importing scikit-learn (it is needed only by scikit-learn's own tools, e.g. for the estimator tags).

**Groups.** The entity of each row is given as ``groups=`` (an array of ints or strings, like scikit-learn's
``groups`` of ``GroupKFold``), or as a column of ``X`` (``groups_column=``: a DataFrame column name or a
column position; that column is not a feature; integral floats in it, as in a float matrix, are int keys).
With neither, all rows are one group: an ordinary L2-penalized GLM (the intercept penalized like the other
coefficients). A group not seen in training is scored by its prior (coefficients 0): its score is the offset.

**Features.** ``X`` is numeric ``(n, F)`` (a NumPy array, a pandas DataFrame, or a SciPy sparse matrix):
column ``j`` is feature ``j + 1``; the intercept (feature 0) is implicit, never one of the columns. The
fixed-effect score enters as ``offset=`` in ``fit``, ``partial_fit`` and the prediction methods.

**partial_fit** is the sequential Bayesian update: the posterior of the previous calls is the prior of the
next, with forgetting factor ``delta`` (default 1: nothing is forgotten, so for the linear loss with full
precision, ``partial_fit`` on mini-batches equals ``fit`` on all of them). ``fit`` always starts afresh.

**scikit-learn's ``check_estimator``** passes on both classes (``tests/test_estimator.py`` runs every check
scikit-learn yields for them). Checks that do not apply, and why:

- the multi-class checks: the classifier is binary (logistic per group). Its tags say so
  (``classifier_tags.multi_class=False``), so scikit-learn runs ``check_classifier_not_supporting_multiclass``
  instead (more than two classes raise ``ValueError("Only binary classification is supported. ...")``);
- ``check_array_api_input``: inputs are converted to NumPy (the model runs in JAX); scikit-learn skips it
  unless ``SCIPY_ARRAY_API`` is set;
- the checks of other estimator kinds (transformers, clusterers, outlier detectors) and
  ``check_regressors_no_decision_function``-style deprecations: the regressor has no ``decision_function``
  (its margin is :meth:`RandomEffectRegressor.predict_margin`).

Groups are this estimator's point, and scikit-learn's checks never pass ``groups``: they test the one-group
case (an L2-penalized GLM); the per-group behaviour is tested against per-group oracles.
"""

from __future__ import annotations

import inspect
import numbers
import warnings
from typing import Any, TypeVar

import numpy as np

from lljax.data.dataset import Dataset
from lljax.data.errors import input_error
from lljax.model.random_effect import RandomEffectModel

__all__ = ["RandomEffectClassifier", "RandomEffectRegressor", "NotFittedError"]

_Estimator = TypeVar("_Estimator", bound="_RandomEffectEstimator")


class NotFittedError(ValueError, AttributeError):
    """A prediction method was called before ``fit`` (scikit-learn's name and bases)."""


class _RandomEffectEstimator:
    """The shared machinery: parameters, input validation, the model."""

    _loss: str = "linear"

    # The constructor arguments both subclasses store as given (declared here for the shared methods).
    l2: float
    delta: float
    hessian: str
    max_iter: int
    tol: float | None
    min_rows: int
    max_rows: int | None
    groups_column: Any
    penalize_intercept: bool

    # -- scikit-learn's parameter protocol -------------------------------------------------------------

    @classmethod
    def _get_param_names(cls) -> list[str]:
        signature = inspect.signature(cls.__init__)
        return sorted(p.name for p in signature.parameters.values() if p.name != "self" and p.kind != p.VAR_KEYWORD)

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor arguments, as given (``deep`` is accepted for scikit-learn; nothing is nested)."""
        return {name: getattr(self, name) for name in self._get_param_names()}

    def set_params(self: _Estimator, **params: Any) -> _Estimator:
        """Set constructor arguments; ``ValueError`` naming an unknown one. Returns ``self``."""
        valid = self._get_param_names()
        for name, value in params.items():
            if name not in valid:
                raise input_error(name, value, f"is not a parameter of {type(self).__name__} (parameters: {valid})")
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        defaults = {p.name: p.default for p in inspect.signature(type(self).__init__).parameters.values()}
        changed = [f"{k}={v!r}" for k, v in self.get_params().items() if not _same(v, defaults.get(k))]
        return f"{type(self).__name__}({', '.join(changed)})"

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "model_")

    def __sklearn_tags__(self) -> Any:
        from sklearn.utils import ClassifierTags, InputTags, RegressorTags, Tags, TargetTags

        classifier = self._loss == "logistic"
        return Tags(estimator_type="classifier" if classifier else "regressor",
                    target_tags=TargetTags(required=True, positive_only=self._loss == "poisson"),
                    transformer_tags=None,
                    classifier_tags=ClassifierTags(multi_class=False) if classifier else None,
                    regressor_tags=None if classifier else RegressorTags(),
                    input_tags=InputTags(sparse=True, allow_nan=False))

    # -- validation -----------------------------------------------------------------------------------------

    def _model(self) -> RandomEffectModel:
        return RandomEffectModel(self._loss, l2=self.l2, delta=self.delta, hessian=self.hessian,
                                 max_iter=self.max_iter, tol=self.tol, min_rows=self.min_rows,
                                 max_rows=self.max_rows, penalize_intercept=self.penalize_intercept)

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise _not_fitted_error()(f"This {type(self).__name__} instance is not fitted yet. Call 'fit' with "
                                 "appropriate arguments before using this estimator.")

    def _features(self, X: Any, groups: Any, reset: bool) -> tuple[dict[str, Any], Any, int]:
        """``(features for Dataset.from_arrays, groups (n,), n)``: validates ``X``, takes the groups column out."""
        names = _column_names(X)
        column = self.groups_column
        if column is not None and groups is not None:
            raise input_error("groups", "<array>", f"is given, but so is groups_column={column!r}: give one")
        if hasattr(X, "iloc") and hasattr(X, "columns"):  # a pandas DataFrame
            if column is not None:
                if column not in X.columns:
                    raise input_error("groups_column", column, f"is not a column of X (columns: {list(X.columns)})")
                groups = X[column].to_numpy()
                X = X.drop(columns=[column])
                names = None if names is None else [c for c in names if c != column]
            X = X.to_numpy()
        elif column is not None:
            arr = np.asarray(X) if not _is_sparse(X) else None
            if arr is None or arr.ndim != 2 or not isinstance(column, numbers.Integral) or \
                    not -arr.shape[1] <= column < arr.shape[1]:
                raise input_error("groups_column", column, "must be a column position of a 2-d dense X (or a "
                                  "column name of a DataFrame X)")
            groups = arr[:, column]
            if groups.dtype.kind == "f" and np.all(np.isfinite(groups)) and np.all(groups == np.round(groups)):
                groups = groups.astype(np.int64)  # ids in a float matrix: integral floats are int keys
            X = np.delete(arr, int(column), axis=1)
        if names is not None and any(not isinstance(n, str) for n in names):
            names = None
        self._check_names(names, reset)
        features, n, width = _numeric_matrix(X)
        if reset:
            self.n_features_in_ = width
        elif width != self.n_features_in_:
            raise ValueError(f"X has {width} features, but {type(self).__name__} is expecting {self.n_features_in_} "
                             "features as input.")
        if groups is None:
            groups = np.zeros(n, np.int64)
        else:
            groups = np.asarray(groups)
            if groups.ndim != 1 or len(groups) != n:
                raise input_error("groups", f"<array of shape {groups.shape}>",
                                  f"must have one entry per row of X ({n})")
            if groups.dtype == object:
                groups = groups.tolist()
        return features, groups, n

    def _check_names(self, names: list[str] | None, reset: bool) -> None:
        if reset:
            if names is not None:
                self.feature_names_in_ = np.asarray(names, dtype=object)
            elif hasattr(self, "feature_names_in_"):
                del self.feature_names_in_
            return
        fitted = getattr(self, "feature_names_in_", None)
        if fitted is None and names is not None:
            warnings.warn(f"X has feature names, but {type(self).__name__} was fitted without feature names",
                          UserWarning, stacklevel=3)
        elif fitted is not None and names is None:
            warnings.warn(f"X does not have valid feature names, but {type(self).__name__} was fitted with feature "
                          "names", UserWarning, stacklevel=3)
        elif fitted is not None and names is not None and list(fitted) != list(names):
            raise ValueError("The feature names should match those that were passed during fit.\n"
                             f"Feature names seen at fit time: {list(fitted)}\nFeature names now: {list(names)}")

    def _dataset(self, X: Any, y: Any, groups: Any, sample_weight: Any, offset: Any, reset: bool) -> Dataset:
        features, groups, n = self._features(X, groups, reset)
        if y is None:
            raise ValueError(f"{type(self).__name__} requires y to be passed, but the target y is None")
        label = self._encode_target(y, n, reset)
        dtype = features.pop("dtype")
        weight = None if sample_weight is None else _vector("sample_weight", sample_weight, n)
        if weight is not None and n and weight.max() <= 0:
            raise ValueError("sample_weight: all sample weights are zero (or negative); at least one must be "
                             "positive")
        return Dataset.from_arrays(groups, label.astype(dtype), weight=weight,
                                   offset=None if offset is None else _vector("offset", offset, n), dtype=dtype,
                                   **features)

    def _encode_target(self, y: Any, n: int, reset: bool) -> np.ndarray:
        y = _target(y, n)
        if y.dtype.kind not in "fiub":
            raise ValueError(f"Unknown label type: y of dtype {y.dtype} must hold numbers")
        if not np.isfinite(y.astype(np.float64)).all():
            raise ValueError("Input y contains NaN or infinity.")
        return y.astype(np.float64)

    def _margins(self, X: Any, groups: Any, offset: Any) -> np.ndarray:
        self._check_fitted()
        features, groups, n = self._features(X, groups, reset=False)
        dtype = features.pop("dtype")
        data = Dataset.from_arrays(groups, np.zeros(n, dtype), dtype=dtype,
                                   offset=None if offset is None else _vector("offset", offset, n), **features)
        return self.model_.score(data)

    # -- fitting ------------------------------------------------------------------------------------------------

    def fit(self: _Estimator, X: Any, y: Any, groups: Any = None, sample_weight: Any = None,
            offset: Any = None) -> _Estimator:
        """Fit one GLM per group on ``X (n, F)``, ``y (n,)`` (a fresh model); returns ``self``.

        ``groups (n,)``: each row's group (entity) key, unless ``groups_column`` names a column of ``X``;
        ``sample_weight (n,)``: non-negative row weights; ``offset (n,)``: the fixed-effect score of each row.
        """
        for name in [n for n in ("model_", "report_", "classes_") if hasattr(self, n)]:
            delattr(self, name)
        data = self._dataset(X, y, groups, sample_weight, offset, reset=True)
        model = self._model()
        self.report_ = model.update(data)
        self.model_ = model
        self.n_iter_ = int(self.report_.iterations.max(initial=0))
        return self

    def partial_fit(self: _Estimator, X: Any, y: Any, groups: Any = None, sample_weight: Any = None,
                    offset: Any = None, **kwargs: Any) -> _Estimator:
        """One sequential Bayesian update on a mini-batch (the posterior so far is the prior, forgetting factor
        ``delta``); the first call starts a fresh model. Returns ``self``."""
        first = not hasattr(self, "model_")
        if first:
            self._start_partial(kwargs)
        elif kwargs.get("classes") is not None:
            self._check_classes(kwargs["classes"])
        data = self._dataset(X, y, groups, sample_weight, offset, reset=first)
        model = self.model_ if not first else self._model()
        self.report_ = model.update(data)
        self.model_ = model
        self.n_iter_ = int(self.report_.iterations.max(initial=0))
        return self

    def _start_partial(self, kwargs: dict) -> None:
        if kwargs:
            raise TypeError(f"partial_fit() got unexpected keyword arguments {sorted(kwargs)}")

    def _check_classes(self, classes: Any, first: bool = False) -> None:
        """``classes=`` of a later ``partial_fit`` call: only the classifier takes it."""
        raise TypeError("partial_fit() got unexpected keyword arguments ['classes']")



class RandomEffectClassifier(_RandomEffectEstimator):
    """Binary classifier: one L2-penalized logistic regression per group, trained all at once.

    Args:
      l2: L2 weight (also the prior precision of every coefficient).
      delta: forgetting factor of :meth:`partial_fit` (1: the posterior so far is the whole prior).
      hessian: posterior precision kept per group: ``"full"``, ``"diagonal"``, ``"identity"`` or ``"none"``.
      max_iter, tol, min_rows, max_rows: as :class:`RandomEffectModel`.
      groups_column: the column of ``X`` holding each row's group (a DataFrame column name or a position),
        or ``None`` (give ``groups=`` to the methods, or nothing for one group).
      penalize_intercept: as :class:`RandomEffectModel` (``False``: each group's intercept has no L2 term).

    Attributes (after ``fit``): ``classes_`` (the two classes, sorted; the second is the positive one),
    ``model_`` (the :class:`RandomEffectModel`), ``report_`` (the last :class:`UpdateReport`),
    ``n_features_in_``, ``feature_names_in_`` (for a DataFrame ``X`` with string column names).
    """

    _loss = "logistic"
    _estimator_type = "classifier"

    def __init__(self, l2: float = 1.0, delta: float = 1.0, hessian: str = "full", max_iter: int = 50,
                 tol: float | None = None, min_rows: int = 1, max_rows: int | None = None,
                 groups_column: Any = None, penalize_intercept: bool = True):
        self.l2 = l2
        self.delta = delta
        self.hessian = hessian
        self.max_iter = max_iter
        self.tol = tol
        self.min_rows = min_rows
        self.max_rows = max_rows
        self.groups_column = groups_column
        self.penalize_intercept = penalize_intercept

    def _encode_target(self, y: Any, n: int, reset: bool) -> np.ndarray:
        y = _target(y, n)
        if y.dtype.kind == "f" and not np.isfinite(y).all():
            raise ValueError("Input y contains NaN or infinity.")
        if y.dtype.kind == "f" and np.any(y != np.round(y)):
            raise ValueError(f"Unknown label type: continuous. y has the value {y[np.argmax(y != np.round(y))]!r}: "
                             f"{type(self).__name__} is a classifier (use RandomEffectRegressor for a real target)")
        if reset and not hasattr(self, "classes_"):
            classes = np.unique(y)
            if len(classes) > 2:
                raise ValueError(f"Only binary classification is supported. {type(self).__name__} is logistic per "
                                 f"group: y has {len(classes)} classes ({_shown_classes(classes)})")
            if len(classes) < 2:
                raise ValueError(f"{type(self).__name__} needs samples of 2 classes, but y has only one class: "
                                 f"{_shown_classes(classes)}")
            self.classes_ = classes
        unknown = ~np.isin(y, self.classes_)
        if unknown.any():
            raise ValueError(f"y has the label {y[np.argmax(unknown)]!r}, which is not one of the classes "
                             f"{_shown_classes(self.classes_)}")
        return (y == self.classes_[-1]).astype(np.float64)

    def _start_partial(self, kwargs: dict) -> None:
        classes = kwargs.pop("classes", None)
        super()._start_partial(kwargs)
        if classes is not None:
            self._check_classes(classes, first=True)

    def _check_classes(self, classes: Any, first: bool = False) -> None:
        classes = np.unique(np.asarray(classes))
        if len(classes) != 2:
            raise ValueError(f"classes must hold 2 classes, not {len(classes)} ({_shown_classes(classes)})")
        if first:
            self.classes_ = classes
        elif not np.array_equal(classes, self.classes_):
            raise ValueError(f"classes={_shown_classes(classes)} differs from the first call's "
                             f"{_shown_classes(self.classes_)}")

    def decision_function(self, X: Any, groups: Any = None, offset: Any = None) -> np.ndarray:
        """``(n,)`` margins ``offset + x . theta_group`` (a group never fitted: its offset)."""
        return self._margins(X, groups, offset)

    def predict_proba(self, X: Any, groups: Any = None, offset: Any = None) -> np.ndarray:
        """``(n, 2)`` probabilities of ``classes_[0]`` and ``classes_[1]``: ``sigmoid(margin)`` for the latter."""
        margins = self.decision_function(X, groups, offset)
        positive = 0.5 * (1.0 + np.tanh(0.5 * margins))  # sigmoid without overflow
        return np.column_stack([1.0 - positive, positive])

    def predict_log_proba(self, X: Any, groups: Any = None, offset: Any = None) -> np.ndarray:
        margins = self.decision_function(X, groups, offset)
        return np.column_stack([-np.logaddexp(0.0, margins), -np.logaddexp(0.0, -margins)])

    def predict(self, X: Any, groups: Any = None, offset: Any = None) -> np.ndarray:
        """``(n,)`` predicted classes: ``classes_[1]`` where the margin is > 0."""
        self._check_fitted()
        return self.classes_[(self.decision_function(X, groups, offset) > 0).astype(np.int64)]

    def score(self, X: Any, y: Any, groups: Any = None, sample_weight: Any = None, offset: Any = None) -> float:
        """Mean accuracy (weighted by ``sample_weight``)."""
        correct = self.predict(X, groups, offset) == np.asarray(y)
        return float(np.average(correct, weights=sample_weight))


class RandomEffectRegressor(_RandomEffectEstimator):
    """Regressor: one L2-penalized linear (``loss="linear"``) or Poisson (``loss="poisson"``) regression per group.

    ``predict`` gives the mean: the margin for ``"linear"``, ``exp(margin)`` for ``"poisson"`` (labels are
    non-negative counts); ``decision_function`` the margin. Other arguments and attributes as
    :class:`RandomEffectClassifier`.
    """

    _estimator_type = "regressor"

    def __init__(self, loss: str = "linear", l2: float = 1.0, delta: float = 1.0, hessian: str = "full",
                 max_iter: int = 50, tol: float | None = None, min_rows: int = 1, max_rows: int | None = None,
                 groups_column: Any = None, penalize_intercept: bool = True):
        self.loss = loss
        self.l2 = l2
        self.delta = delta
        self.hessian = hessian
        self.max_iter = max_iter
        self.tol = tol
        self.min_rows = min_rows
        self.max_rows = max_rows
        self.groups_column = groups_column
        self.penalize_intercept = penalize_intercept

    @property
    def _loss(self) -> str:  # type: ignore[override]  # a property (validated on read) over the base's class attribute
        if self.loss not in ("linear", "poisson"):
            raise input_error("loss", self.loss, "must be 'linear' or 'poisson' (RandomEffectClassifier is logistic)")
        return self.loss

    def predict(self, X: Any, groups: Any = None, offset: Any = None) -> np.ndarray:
        """``(n,)`` predicted means (``exp`` of :meth:`predict_margin` for Poisson, the margin for linear)."""
        margins = self._margins(X, groups, offset)
        return np.exp(margins) if self._loss == "poisson" else margins

    def predict_margin(self, X: Any, groups: Any = None, offset: Any = None) -> np.ndarray:
        """``(n,)`` margins ``offset + x . theta_group`` (the log-rate for Poisson). Regressors have no
        ``decision_function`` in scikit-learn's conventions."""
        return self._margins(X, groups, offset)

    def score(self, X: Any, y: Any, groups: Any = None, sample_weight: Any = None, offset: Any = None) -> float:
        """R² of the predictions (weighted by ``sample_weight``)."""
        y = np.asarray(y, np.float64)
        predicted = self.predict(X, groups, offset)
        w = np.ones_like(y) if sample_weight is None else np.asarray(sample_weight, np.float64)
        residual = np.sum(w * (y - predicted) ** 2)
        total = np.sum(w * (y - np.average(y, weights=w)) ** 2)
        return float(1.0 - residual / total) if total > 0 else (1.0 if residual == 0 else 0.0)


# ---------------------------------------------------------------------------------------------------------


_NOT_FITTED: list[type] = []


def _not_fitted_error() -> type[Exception]:
    """:class:`NotFittedError`, and also scikit-learn's ``NotFittedError`` when scikit-learn is installed (so that
    its ``check_is_fitted`` conventions hold)."""
    if not _NOT_FITTED:
        try:
            from sklearn.exceptions import NotFittedError as SklearnNotFitted
        except ImportError:
            _NOT_FITTED.append(NotFittedError)
        else:
            _NOT_FITTED.append(type("NotFittedError", (NotFittedError, SklearnNotFitted), {"__module__": __name__}))
    return _NOT_FITTED[0]


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a is b or a == b)
    except (TypeError, ValueError):
        return False


def _shown_classes(classes: np.ndarray) -> str:
    listed = [c.item() if isinstance(c, np.generic) else c for c in classes[:5]]
    return repr(listed) + (" ..." if len(classes) > 5 else "")


def _is_sparse(X: Any) -> bool:
    return hasattr(X, "tocsr") and hasattr(X, "nnz")


def _column_names(X: Any) -> list | None:
    columns = getattr(X, "columns", None)
    return None if columns is None else list(columns)


def _numeric_matrix(X: Any) -> tuple[dict[str, Any], int, int]:
    """``(features for Dataset.from_arrays, n, F)``: dense ``X`` or CSR of a sparse one; scikit-learn's messages."""
    if _is_sparse(X):
        X = X.tocsr()
        if X.ndim != 2:
            raise ValueError(f"Expected 2D array, got a sparse matrix of shape {X.shape} instead.")
        n, width = X.shape
        _check_size(n, width, X.shape)
        if np.iscomplexobj(X.data):
            raise ValueError("Complex data not supported")
        data = X.data
        if data.dtype.kind not in "fiub":
            raise ValueError(f"X has dtype {data.dtype}; it must be numeric")
        dtype = np.float32 if data.dtype == np.float32 else np.float64
        data = data.astype(dtype, copy=False)
        if not np.isfinite(data).all():
            raise ValueError("Input X contains NaN or infinity.")
        X.sum_duplicates()
        return {"indptr": X.indptr.astype(np.int64), "feature_ids": X.indices.astype(np.int64) + 1,
                "values": data, "num_features": width + 1, "dtype": dtype}, n, width
    try:
        arr = np.asarray(X)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"X cannot be read as a numeric array: {exc}") from None
    if np.iscomplexobj(arr):
        raise ValueError("Complex data not supported")
    if arr.ndim == 1:
        raise ValueError("Expected 2D array, got 1D array instead. Reshape your data either using "
                         "array.reshape(-1, 1) if your data has a single feature or array.reshape(1, -1) if it "
                         "contains a single sample.")
    if arr.ndim != 2:
        raise ValueError(f"Expected 2D array, got an array of shape {arr.shape} instead.")
    _check_size(arr.shape[0], arr.shape[1], arr.shape)
    if arr.dtype.kind not in "fiub":
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError) as exc:
            error = TypeError if isinstance(exc, TypeError) else ValueError
            raise error(f"X must be numeric ({exc})") from None
    dtype = np.float32 if arr.dtype == np.float32 else np.float64
    arr = arr.astype(dtype, copy=False)
    if not np.isfinite(arr).all():
        raise ValueError("Input X contains NaN or infinity.")
    return {"X": arr, "dtype": dtype}, arr.shape[0], arr.shape[1]


def _check_size(n: int, width: int, shape: tuple) -> None:
    if n < 1:
        raise ValueError(f"Found array with 0 sample(s) (shape={shape}) while a minimum of 1 is required.")
    if width < 1:
        raise ValueError(f"Found array with 0 feature(s) (shape={shape}) while a minimum of 1 is required.")


def _target(y: Any, n: int) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        warnings.warn("A column-vector y was passed when a 1d array was expected. Please change the shape of y "
                      "to (n_samples, ), for example using ravel().", _data_conversion_warning(), stacklevel=4)
        y = y.ravel()
    if y.ndim != 1:
        raise ValueError(f"y should be a 1d array, got an array of shape {y.shape} instead.")
    if len(y) != n:
        raise ValueError(f"Found input variables with inconsistent numbers of samples: [{n}, {len(y)}]")
    return y


def _data_conversion_warning() -> type[Warning]:
    try:
        from sklearn.exceptions import DataConversionWarning

        return DataConversionWarning
    except ImportError:
        return UserWarning


def _vector(name: str, values: Any, n: int) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim == 0:
        arr = np.full(n, float(arr))
    if arr.shape != (n,):
        raise ValueError(f"{name} should have shape ({n},), got {arr.shape}")
    return arr
