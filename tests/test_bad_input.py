"""The inventory of bad input at every host entry point, and what each case gets (docs/bad_input.md).

One row of ``CASES`` per case: the entry point, a call that feeds it the bad input, the exception
type (exactly, not a subclass: a ``UnicodeDecodeError`` escaping instead of a clear ``ValueError``
is a failure), the field the message must name, and further fragments it must contain (the value,
the entity, the example / record / file and line). ``ACCEPTED`` lists the inputs that are
deliberately accepted, with the documented meaning checked.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from scipy import sparse

from lljax import Dataset, Feature, IndexMap, RandomEffectModel, TrainingRecord, compat, iter_ntv_jsonl, read_ntv_jsonl
from lljax.compat import IndexedDataset, IndexedModel, UnknownFeatureError
from lljax.data.ntv import write_ntv_jsonl


@dataclass(frozen=True)
class Case:
    """One bad input: ``call(tmp_path)`` must raise ``error`` naming ``field`` and every fragment."""

    id: str
    entry: str
    call: Callable[[Any], Any]
    error: type | tuple[type, ...]
    field: str
    fragments: tuple[str, ...] = ()


# ----------------------------------------------------------------------------- fixtures of good input

ENT = np.array(["a", "a", "b"])
LAB = np.array([1.0, 0.0, 1.0])
XD = np.array([[0.0, 1.0], [0.0, 2.0], [0.0, 3.0]])


def arrays(**overrides: Any) -> Dataset:
    """``Dataset.from_arrays`` on a good 3-example, 2-entity input with ``overrides`` applied."""
    kw: dict[str, Any] = dict(entity=ENT, label=LAB, X=XD)
    kw.update(overrides)
    kw = {k: v for k, v in kw.items() if v is not _DROP}
    return Dataset.from_arrays(kw.pop("entity"), kw.pop("label"), **kw)


def csr(**overrides: Any) -> Dataset:
    """Same input with CSR features (one feature per example) instead of ``X``."""
    kw: dict[str, Any] = dict(X=_DROP, indptr=[0, 1, 2, 3], feature_ids=[1, 1, 1], values=[1.0, 2.0, 3.0])
    kw.update(overrides)
    return arrays(**kw)


_DROP = object()


def imap() -> IndexMap:
    m = IndexMap()
    m.batch_push([("a", "x"), ("b", "y")])
    return m


def rec(label: Any = 1.0, weight: Any = 1.0, offset: Any = 0.0, features: Any = None) -> TrainingRecord:
    return TrainingRecord(label, weight, offset, [Feature("a", "x", 1.0)] if features is None else features)


def records(bad: Any, key: Any = "u2") -> Dataset:
    """``Dataset.from_records`` with a good first record and ``bad`` second (record 1)."""
    return Dataset.from_records([("u1", rec()), (key, bad)], imap())


def model(**kwargs: Any) -> RandomEffectModel:
    return RandomEffectModel(**kwargs)


def update(dataset_or_fn: Any, loss: str = "logistic") -> Any:
    dataset = dataset_or_fn() if callable(dataset_or_fn) else dataset_or_fn
    return RandomEffectModel(loss, l2=1.0).update(dataset)


def update_twice(first: Dataset, second: Dataset) -> Any:
    m = RandomEffectModel("linear", l2=1.0)
    m.update(first)
    return m.update(second)


def ntv(tmp_path: Any, bad_line: str | bytes) -> list:
    """Read a file whose line 3 is ``bad_line`` (line 1 good, line 2 blank, line 4 good)."""
    good = b'{"uid": "ok", "label": 1, "features": [{"name": "n", "term": "t", "value": 1.0}]}'
    line = bad_line if isinstance(bad_line, bytes) else bad_line.encode("utf-8")
    path = tmp_path / "bad.jsonl"
    path.write_bytes(good + b"\n\n" + line + b"\n" + good + b"\n")
    return read_ntv_jsonl(path)


def line(**fields: str | None) -> str:
    """A JSON line for entity "e7"; ``fields`` replace the good raw JSON values (None drops a field)."""
    base: dict[str, str | None] = {"uid": '"e7"', "label": "1", "weight": "1.0", "offset": "0.0",
                                   "features": '[{"name": "n", "term": "t", "value": 1.0}]'}
    base.update(fields)
    return "{" + ", ".join(f'"{k}": {v}' for k, v in base.items() if v is not None) + "}"


def nt_data(bad: TrainingRecord) -> Any:
    m = compat.IndexMap()
    m.push(("a", "x"))
    return compat.nt_domain_data_to_index_domain_data([rec(), bad], m, entity="user-7")


def nt_coeffs(means: list, variances: list, reg: Any = 1.0) -> Any:
    m = compat.IndexMap()
    m.push(("a", "x"))
    return compat.nt_domain_coeffs_to_index_domain_coeffs(means, variances, m, reg)


def nt_back(theta: Any) -> Any:
    m = compat.IndexMap()
    m.push(("a", "x"))
    return compat.index_domain_coeffs_to_nt_domain_coeffs(IndexedModel(theta), m)


def idata(data: Any = None, labels: Any = None, weights: Any = None, offsets: Any = None) -> IndexedDataset:
    data = np.ones((4, 2)) if data is None else data
    labels = np.array([1.0, 0.0, 1.0, 0.0]) if labels is None else labels
    weights = np.ones(4) if weights is None else weights
    offsets = np.zeros(4) if offsets is None else offsets
    return IndexedDataset(data, labels, weights, offsets, entity="e9")


def trainer(cls: type = compat.TrainerLogisticLossWithL2, data: Any = None, theta: Any = None, hessian: Any = None,
            **kwargs: Any) -> Any:
    return cls(training_data=idata() if data is None else data, initial_model=IndexedModel(theta, hessian), **kwargs)


def bayes(hessian: Any, **kwargs: Any) -> Any:
    return trainer(compat.TrainerSequentialBayesianLogisticLossWithL2, theta=np.zeros(2), hessian=hessian, **kwargs)


def score(model_: Any, threshold: Any = 0.0) -> Any:
    return compat.score_linear_model(model_, idata(), threshold, rng=0)


# ----------------------------------------------------------------------------- the table

FA, FR, MC, MU, MS = ("Dataset.from_arrays", "Dataset.from_records", "RandomEffectModel()",
                      "RandomEffectModel.update", "RandomEffectModel.score")
RD, WR, CC, CT, CS = ("read_ntv_jsonl", "write_ntv_jsonl", "compat conversions", "compat trainers",
                      "compat.score_linear_model")
F32 = np.float32

CASES = [
    # --- Dataset.from_arrays: non-finite and negative numbers
    Case("label-nan", FA, lambda _: arrays(label=[1.0, np.nan, 1.0]), ValueError, "label",
         ("nan", "entity 'a'", "example 1")),
    Case("label-inf", FA, lambda _: arrays(label=[1.0, 0.0, np.inf]), ValueError, "label", ("inf", "entity 'b'")),
    Case("label-overflows-float32", FA, lambda _: arrays(label=[1e300, 0.0, 1.0], dtype=F32), ValueError, "label",
         ("inf", "entity 'a'")),
    Case("weight-nan", FA, lambda _: arrays(weight=[1.0, np.nan, 1.0]), ValueError, "weight", ("nan", "entity 'a'")),
    Case("weight-negative", FA, lambda _: arrays(weight=[1.0, 1.0, -0.5]), ValueError, "weight",
         ("-0.5", "entity 'b'", "example 2")),
    Case("offset-inf", FA, lambda _: arrays(offset=[-np.inf, 0.0, 0.0]), ValueError, "offset",
         ("-inf", "entity 'a'")),
    Case("X-nan", FA, lambda _: arrays(X=np.array([[0, 1.0], [0, 2.0], [0, np.nan]])), ValueError, "values",
         ("nan", "entity 'b'", "example 2")),
    Case("csr-values-inf", FA, lambda _: csr(values=[1.0, np.inf, 3.0]), ValueError, "values",
         ("inf", "entity 'a'", "example 1")),
    # --- wrong dtypes
    Case("label-strings", FA, lambda _: arrays(label=["1", "0", "1"]), TypeError, "label",
         ("'1'", "example 0", "entity 'a'")),
    Case("weight-None", FA, lambda _: arrays(weight=[1.0, None, 1.0]), TypeError, "weight", ("None", "example 1")),
    Case("X-strings", FA, lambda _: arrays(X=np.array([["0", "1"]] * 3)), TypeError, "X", ("<U1",)),
    Case("X-complex", FA, lambda _: arrays(X=XD * 1j), TypeError, "X", ("complex128",)),
    Case("feature_ids-floats", FA, lambda _: csr(feature_ids=[1.5, 1.0, 1.0]), TypeError, "feature_ids",
         ("float64",)),
    Case("indptr-floats", FA, lambda _: csr(indptr=[0, 1.0, 2, 3]), TypeError, "indptr", ("float64",)),
    Case("dtype-int", FA, lambda _: arrays(dtype=np.int32), TypeError, "dtype", ("int32",)),
    Case("dtype-not-a-dtype", FA, lambda _: arrays(dtype="bogus"), TypeError, "dtype", ("bogus",)),
    Case("intercept_id-float", FA, lambda _: arrays(intercept_id=0.5), TypeError, "intercept_id", ("0.5",)),
    Case("num_features-float", FA, lambda _: arrays(num_features=2.5), TypeError, "num_features", ("2.5",)),
    # --- wrong shapes and lengths
    Case("label-length", FA, lambda _: arrays(label=[1.0, 0.0]), ValueError, "label", ("length 2", "expected 3")),
    Case("weight-length", FA, lambda _: arrays(weight=np.ones(4)), ValueError, "weight", ("length 4",)),
    Case("offset-length", FA, lambda _: arrays(offset=np.ones(2)), ValueError, "offset", ("length 2",)),
    Case("X-rows", FA, lambda _: arrays(X=np.ones((2, 2))), ValueError, "X", ("length 2", "expected 3")),
    Case("X-1d", FA, lambda _: arrays(X=np.ones(3)), ValueError, "X", ("(3,)",)),
    Case("label-2d", FA, lambda _: arrays(label=np.ones((3, 1))), ValueError, "label", ("(3, 1)",)),
    Case("entity-2d", FA, lambda _: arrays(entity=np.ones((3, 1), int)), ValueError, "entity", ("(3, 1)",)),
    Case("indptr-length", FA, lambda _: csr(indptr=[0, 1, 3]), ValueError, "indptr", ("length 3", "expected 4")),
    Case("indptr-start", FA, lambda _: csr(indptr=[1, 1, 2, 3]), ValueError, "indptr", ("value 1", "position 0")),
    Case("indptr-decreasing", FA, lambda _: csr(indptr=[0, 2, 1, 3]), ValueError, "indptr",
         ("value 1", "position 2")),
    Case("indptr-end", FA, lambda _: csr(indptr=[0, 1, 2, 2]), ValueError, "indptr", ("value 2", "nnz=3")),
    Case("values-length", FA, lambda _: csr(values=[1.0, 2.0]), ValueError, "values", ("length 2",)),
    Case("feature_ids-out-of-range", FA, lambda _: csr(feature_ids=[1, 7, 1], num_features=4), ValueError,
         "feature_ids", ("value 7", "entity 'a'")),
    Case("feature_ids-negative", FA, lambda _: csr(feature_ids=[1, 1, -1]), ValueError, "feature_ids",
         ("value -1", "entity 'b'")),
    Case("csr-without-indptr", FA, lambda _: csr(indptr=_DROP), ValueError, "indptr", ("None", "required")),
    Case("X-and-csr", FA, lambda _: csr(X=XD), ValueError, "X", ("not both",)),
    Case("intercept_id-negative", FA, lambda _: arrays(intercept_id=-1), ValueError, "intercept_id", ("-1",)),
    Case("intercept_id-too-large", FA, lambda _: arrays(intercept_id=5, num_features=3), ValueError,
         "intercept_id", ("5", "[0, 3)")),
    Case("num_features-negative", FA, lambda _: arrays(X=_DROP, num_features=-3, intercept_id=None), ValueError,
         "num_features", ("-3",)),
    # --- entity keys
    Case("entity-mixed-list", FA, lambda _: arrays(entity=[1, 2, "a"]), TypeError, "entity",
         ("'a'", "example 2", "['int', 'str']")),
    Case("entity-mixed-object-array", FA, lambda _: arrays(entity=np.array(["a", None, "b"], dtype=object)),
         TypeError, "entity", ("None", "example 1")),
    Case("entity-floats", FA, lambda _: arrays(entity=np.array([1.0, 1.0, 2.0])), TypeError, "entity",
         ("1.0", "floats")),
    Case("entity-bools", FA, lambda _: arrays(entity=np.array([True, True, False])), TypeError, "entity",
         ("bool",)),
    Case("entity-None", FA, lambda _: arrays(entity=[None, None, None]), TypeError, "entity", ("None",)),
    # --- Dataset.from_records
    Case("records-unknown-feature", FR, lambda _: records(rec(features=[Feature("zz", "q", 1.0)])), ValueError,
         "features", ("('zz', 'q')", "entity 'u2'", "record 1")),
    Case("records-label-string", FR, lambda _: records(rec(label="1")), TypeError, "label",
         ("'1'", "entity 'u2'", "record 1")),
    Case("records-weight-None", FR, lambda _: records(rec(weight=None)), TypeError, "weight",
         ("None", "record 1")),
    Case("records-value-string", FR, lambda _: records(rec(features=[Feature("a", "x", "2")])), TypeError, "values",
         ("'2'", "entity 'u2'", "record 1, feature 0")),
    Case("records-label-nan", FR, lambda _: records(rec(label=float("nan"))), ValueError, "label",
         ("nan", "entity 'u2'")),
    Case("records-weight-negative", FR, lambda _: records(rec(weight=-1.0)), ValueError, "weight",
         ("-1.0", "entity 'u2'")),
    Case("records-not-pairs", FR, lambda _: Dataset.from_records([rec()], imap()), TypeError, "records",
         ("TrainingRecord(", "record 0")),
    Case("records-features-not-list", FR, lambda _: records(rec(features="ax")), TypeError, "features",
         ("'ax'", "entity 'u2'")),
    Case("records-feature-not-Feature", FR, lambda _: records(rec(features=[("a", "x", 1.0)])), TypeError,
         "features", ("('a', 'x', 1.0)", "record 1")),
    Case("records-entity-mixed", FR, lambda _: records(rec(), key=5), TypeError, "entity", ("5", "example 1")),
    # --- RandomEffectModel(...)
    Case("model-loss", MC, lambda _: model(loss="hinge"), ValueError, "loss", ("'hinge'",)),
    Case("model-hessian", MC, lambda _: model(hessian="dense"), ValueError, "hessian", ("'dense'",)),
    Case("model-l2-negative", MC, lambda _: model(l2=-1.0), ValueError, "l2", ("-1.0",)),
    Case("model-l2-nan", MC, lambda _: model(l2=float("nan")), ValueError, "l2", ("nan",)),
    Case("model-delta-range", MC, lambda _: model(delta=1.5), ValueError, "delta", ("1.5",)),
    Case("model-delta-nan", MC, lambda _: model(delta=float("nan")), ValueError, "delta", ("nan",)),
    Case("model-max_iter-negative", MC, lambda _: model(max_iter=-1), ValueError, "max_iter", ("-1",)),
    Case("model-max_iter-float", MC, lambda _: model(max_iter=2.5), ValueError, "max_iter", ("2.5",)),
    Case("model-tol-zero", MC, lambda _: model(tol=0.0), ValueError, "tol", ("0.0",)),
    Case("model-tol-nan", MC, lambda _: model(tol=float("nan")), ValueError, "tol", ("nan",)),
    Case("model-tol-string", MC, lambda _: model(tol="x"), (TypeError, ValueError), "tol", ("'x'",)),
    Case("model-memory_budget", MC, lambda _: model(memory_budget=0), ValueError, "memory_budget", ("0",)),
    Case("model-min_rows", MC, lambda _: model(min_rows=-1), ValueError, "min_rows", ("-1",)),
    Case("model-max_rows", MC, lambda _: model(max_rows=0), ValueError, "max_rows", ("0",)),
    # --- RandomEffectModel.update / score
    Case("update-not-a-dataset", MU, lambda _: update("data.jsonl"), TypeError, "dataset", ("str",)),
    Case("update-empty", MU, lambda _: update(lambda: arrays(entity=[], label=[], X=_DROP)), ValueError, "dataset",
         ("examples=0", "empty")),
    Case("update-logistic-label-2", MU, lambda _: update(lambda: arrays(label=[1.0, 2.0, 0.0])), ValueError,
         "label", ("2.0", "entity 'a'", "logistic")),
    Case("update-logistic-label-half", MU, lambda _: update(lambda: arrays(label=[1.0, 0.0, 0.5])), ValueError,
         "label", ("0.5", "entity 'b'")),
    Case("update-poisson-negative", MU, lambda _: update(lambda: arrays(label=[1.0, 3.0, -1.0]), "poisson"),
         ValueError, "label", ("-1.0", "entity 'b'", "Poisson")),
    Case("update-dtype-changes", MU, lambda _: update_twice(arrays(), arrays(dtype=F32)), TypeError,
         "dataset.dtype", ("float32",)),
    Case("update-entity-key-type-changes", MU,
         lambda _: update_twice(arrays(entity=["1", "1", "2"]), arrays(entity=[1, 1, 2])), TypeError, "entity",
         ("1",)),
    Case("score-not-a-dataset", MS, lambda _: RandomEffectModel().score(XD), TypeError, "dataset", ("ndarray",)),
    # --- NTV JSON lines (file + line named; line 3 of the file is the bad one)
    Case("ntv-bad-json", RD, lambda p: ntv(p, '{"uid": "e7", "label": 1, '), ValueError, "<json>",
         ("bad.jsonl line 3", '{"uid": "e7"')),
    Case("ntv-invalid-utf8", RD, lambda p: ntv(p, b'{"uid": "e\xff7", "label": 1, "features": []}'), ValueError,
         "<json>", ("bad.jsonl line 3", "UTF-8")),
    Case("ntv-invalid-utf8-stream", RD, lambda _: read_ntv_jsonl(io.BytesIO(b'{"uid": "\xc3"}\n')), ValueError,
         "<json>", ("<stream> line 1", "UTF-8")),
    Case("ntv-nested-too-deeply", RD, lambda p: ntv(p, "[" * 100_000 + "]" * 100_000), ValueError, "<json>",
         ("bad.jsonl line 3", "nested too deeply")),
    Case("ntv-integer-too-long", RD, lambda p: ntv(p, line(label="1" * 5000)), ValueError, "<json>",
         ("bad.jsonl line 3", "digits")),
    Case("ntv-not-an-object", RD, lambda p: ntv(p, "[1, 2]"), TypeError, "<record>", ("bad.jsonl line 3", "[1, 2]")),
    Case("ntv-missing-entity", RD, lambda p: ntv(p, line(uid=None)), ValueError, "uid",
         ("bad.jsonl line 3", "<missing>")),
    Case("ntv-entity-float", RD, lambda p: ntv(p, line(uid="1.5")), TypeError, "uid", ("bad.jsonl line 3", "1.5")),
    Case("ntv-missing-label", RD, lambda p: ntv(p, line(label=None)), ValueError, "label",
         ("bad.jsonl line 3", "entity 'e7'", "<missing>")),
    Case("ntv-label-string", RD, lambda p: ntv(p, line(label='"1"')), TypeError, "label",
         ("bad.jsonl line 3", "entity 'e7'", "'1'")),
    Case("ntv-label-bool", RD, lambda p: ntv(p, line(label="true")), TypeError, "label", ("line 3", "True")),
    Case("ntv-label-nan", RD, lambda p: ntv(p, line(label="NaN")), ValueError, "label", ("line 3", "nan")),
    Case("ntv-label-overflow", RD, lambda p: ntv(p, line(label="1e400")), ValueError, "label", ("line 3", "inf")),
    Case("ntv-weight-negative", RD, lambda p: ntv(p, line(weight="-0.5")), ValueError, "weight",
         ("bad.jsonl line 3", "entity 'e7'", "-0.5")),
    Case("ntv-offset-infinity", RD, lambda p: ntv(p, line(offset="-Infinity")), ValueError, "offset",
         ("line 3", "-inf")),
    Case("ntv-features-missing", RD, lambda p: ntv(p, line(features=None)), ValueError, "features",
         ("line 3", "<missing>")),
    Case("ntv-features-not-list", RD, lambda p: ntv(p, line(features='{"name": "n"}')), TypeError, "features",
         ("line 3", "'name'")),
    Case("ntv-feature-missing-value", RD, lambda p: ntv(p, line(features='[{"name": "n", "term": "t"}]')),
         ValueError, "features[0].value", ("line 3", "<missing>")),
    Case("ntv-feature-name-number", RD, lambda p: ntv(p, line(features='[{"name": 3, "term": "t", "value": 1}]')),
         TypeError, "features[0].name", ("line 3", "3")),
    Case("ntv-context-not-object", RD, lambda p: ntv(p, line(context="[1]")), TypeError, "context",
         ("line 3", "[1]")),
    Case("ntv-not-a-file", RD, lambda _: list(iter_ntv_jsonl(42)), TypeError, "path_or_file", ("int",)),
    Case("ntv-write-context-not-json", WR,
         lambda _: write_ntv_jsonl(io.StringIO(), [("k", TrainingRecord(1.0, 1.0, 0.0, [], {"s": {1, 2}}))]),
         TypeError, "context", ("<stream> record 1", "entity 'k'", "{1, 2}")),
    Case("ntv-write-context-nan", WR,
         lambda _: write_ntv_jsonl(io.StringIO(), [("k", TrainingRecord(1.0, 1.0, 0.0, [], {"x": float("nan")}))]),
         ValueError, "context", ("record 1", "nan")),
    Case("ntv-write-label-nan", WR,
         lambda _: write_ntv_jsonl(io.StringIO(), [("k", TrainingRecord(float("nan"), 1.0, 0.0, []))]),
         ValueError, "label", ("record 1", "entity 'k'", "nan")),
    # --- compat: name-term <-> index conversions
    Case("compat-unknown-feature", CC, lambda _: nt_data(rec(features=[Feature("zz", "q", 1.0)])),
         UnknownFeatureError, "features", ("('zz', 'q')", "user-7", "record 1")),
    Case("compat-label-string", CC, lambda _: nt_data(rec(label="1")), TypeError, "labels",
         ("'1'", "user-7", "record 1")),
    Case("compat-weight-None", CC, lambda _: nt_data(rec(weight=None)), TypeError, "labels_weights",
         ("None", "record 1")),
    Case("compat-value-string", CC, lambda _: nt_data(rec(features=[Feature("a", "x", "2")])), TypeError,
         "features", ("'2'", "('a', 'x')", "record 1")),
    Case("compat-label-nan", CC, lambda _: nt_data(rec(label=float("nan"))), ValueError, "labels",
         ("nan", "user-7", "record 1")),
    Case("compat-weight-negative", CC, lambda _: nt_data(rec(weight=-1.0)), ValueError, "labels_weights",
         ("-1.0", "record 1")),
    Case("compat-value-inf", CC, lambda _: nt_data(rec(features=[Feature("a", "x", float("inf"))])), ValueError,
         "features", ("inf", "('a', 'x'", "record 1")),
    Case("compat-coeff-mean-unknown", CC, lambda _: nt_coeffs([Feature("zz", "q", 1.0)], []), UnknownFeatureError,
         "coeff_means", ("('zz', 'q')",)),
    Case("compat-coeff-variance-unknown", CC, lambda _: nt_coeffs([], [Feature("zz", "q", 1.0)]),
         UnknownFeatureError, "coeff_variances", ("('zz', 'q')",)),
    Case("compat-coeff-mean-nan", CC, lambda _: nt_coeffs([Feature("a", "x", float("nan"))], []), ValueError,
         "coeff_means", ("nan", "('a', 'x')")),
    Case("compat-coeff-mean-string", CC, lambda _: nt_coeffs([Feature("a", "x", "1")], []), TypeError,
         "coeff_means", ("'1'", "('a', 'x')")),
    Case("compat-coeff-variance-zero", CC, lambda _: nt_coeffs([], [Feature("a", "x", 0.0)]), ValueError,
         "coeff_variances", ("0.0", "('a', 'x')")),
    Case("compat-regularization-negative", CC, lambda _: nt_coeffs([], [], -1.0), ValueError,
         "regularization_param", ("-1.0",)),
    Case("compat-regularization-string", CC, lambda _: nt_coeffs([], [], "x"), TypeError,
         "regularization_param", ("'x'",)),
    Case("compat-to-nt-theta-length", CC, lambda _: nt_back(np.zeros(3)), ValueError, "theta", ("(3,)",)),
    Case("compat-to-nt-theta-nan", CC, lambda _: nt_back(np.array([0.0, np.nan])), ValueError, "theta",
         ("nan", "coefficient 1")),
    Case("compat-dataset-label-nan", CC, lambda _: idata(labels=np.array([1.0, np.nan, 1.0, 0.0])), ValueError,
         "labels", ("nan", "entity 'e9'", "example 1")),
    Case("compat-dataset-weight-negative", CC, lambda _: idata(weights=np.array([1.0, 1.0, 1.0, -2.0])),
         ValueError, "labels_weights", ("-2.0", "example 3")),
    Case("compat-dataset-offsets-length", CC, lambda _: idata(offsets=np.zeros(3)), ValueError, "offsets",
         ("length 3", "expected 4")),
    Case("compat-dataset-data-nan", CC, lambda _: idata(data=sparse.csr_matrix(np.diag([1.0, np.nan, 1, 1])[:, :2])),
         ValueError, "data", ("nan", "row 1, column 1")),
    Case("compat-dataset-data-strings", CC, lambda _: idata(data=[["1", "2"]] * 4), TypeError, "data", ("<U1",)),
    Case("compat-dataset-data-1d", CC, lambda _: idata(data=np.ones(4)), ValueError, "data", ("(4,)",)),
    Case("compat-dataset-labels-strings", CC, lambda _: idata(labels=["1", "0", "1", "0"]), TypeError, "labels",
         ("'1'", "example 0")),
    Case("compat-model-hessian-shape", CC, lambda _: IndexedModel(np.zeros(3), np.eye(2)), ValueError, "hessian",
         ("(2, 2)", "(3, 3)")),
    Case("compat-model-theta-2d", CC, lambda _: IndexedModel(np.zeros((2, 2))), ValueError, "theta", ("(2, 2)",)),
    # --- compat trainers
    Case("trainer-penalty-negative", CT, lambda _: trainer(penalty=-1.0), ValueError, "penalty",
         ("-1.0", "entity 'e9'")),
    Case("trainer-penalty-string", CT, lambda _: trainer(penalty="x"), TypeError, "penalty", ("'x'",)),
    Case("trainer-delta-range", CT, lambda _: bayes(np.eye(2), delta=1.5), ValueError, "delta", ("1.5",)),
    Case("trainer-hessian_type", CT, lambda _: trainer(hessian_type="bogus"), TypeError, "hessian_type",
         ("'bogus'",)),
    Case("trainer-theta-length", CT, lambda _: trainer(theta=np.zeros(3)), ValueError, "initial_model.theta",
         ("length 3",)),
    Case("trainer-theta-nan", CT, lambda _: trainer(theta=np.array([0.0, np.nan])), ValueError,
         "initial_model.theta", ("nan", "coefficient 1")),
    Case("trainer-logistic-label", CT, lambda _: trainer(data=idata(labels=np.array([1.0, 2.0, 0.0, 1.0]))),
         ValueError, "labels", ("2.0", "example 1")),
    Case("trainer-prior-asymmetric", CT, lambda _: bayes(np.array([[1.0, 1.0], [0.0, 1.0]])), ValueError,
         "initial_model.hessian", ("symmetric",)),
    Case("trainer-prior-nan", CT, lambda _: bayes(np.array([[1.0, 0.0], [0.0, np.nan]])), ValueError,
         "initial_model.hessian", ("nan", "row 1, column 1")),
    Case("trainer-prior-not-psd", CT, lambda _: bayes(-np.eye(2), delta=1.0), ValueError, "initial_model.hessian",
         ("eigenvalue -1", "semi-definite")),
    Case("trainer-data-type", CT, lambda _: compat.TrainerLogisticLossWithL2(
        training_data=np.ones((2, 2)), initial_model=IndexedModel(None)), TypeError, "training_data", ("ndarray",)),
    Case("trainer-model-type", CT, lambda _: compat.TrainerLogisticLossWithL2(
        training_data=idata(), initial_model=np.zeros(2)), TypeError, "initial_model", ("ndarray",)),
    Case("train-max_iterations", CT, lambda _: trainer().train(max_iterations=0), ValueError, "max_iterations",
         ("0",)),
    Case("train-gradient_tolerance", CT, lambda _: trainer().train(gradient_tolerance=-1.0), ValueError,
         "gradient_tolerance", ("-1.0",)),
    # --- compat scoring
    Case("score-threshold-negative", CS, lambda _: score(IndexedModel(np.zeros(2), np.eye(2)), -0.1), ValueError,
         "exploration_threshold", ("-0.1",)),
    Case("score-threshold-nan", CS, lambda _: score(IndexedModel(np.zeros(2), np.eye(2)), float("nan")), ValueError,
         "exploration_threshold", ("nan",)),
    Case("score-threshold-string", CS, lambda _: score(IndexedModel(np.zeros(2), np.eye(2)), "x"), TypeError,
         "exploration_threshold", ("'x'",)),
    Case("score-explore-without-hessian", CS, lambda _: score(IndexedModel(np.zeros(2)), 0.5), ValueError, "hessian",
         ("None",)),
    Case("score-theta-width", CS, lambda _: score(IndexedModel(np.zeros(3))), ValueError, "theta", ("(3,)",)),
    Case("score-theta-nan", CS, lambda _: score(IndexedModel(np.array([np.nan, 0.0]))), ValueError, "theta",
         ("nan", "coefficient 0")),
    Case("score-hessian-not-pd", CS, lambda _: score(IndexedModel(np.zeros(2), -np.eye(2)), 1.0), ValueError,
         "hessian", ("positive definite",)),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_raises_a_clear_error(case: Case, tmp_path: Any) -> None:
    with pytest.raises(Exception) as info:
        case.call(tmp_path)
    expected = case.error if isinstance(case.error, tuple) else (case.error,)
    assert type(info.value) in expected, f"{type(info.value).__name__}: {info.value}"
    message = str(info.value)
    assert f"field {case.field!r}" in message, message
    for fragment in case.fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_case_ids_are_unique_and_every_entry_point_is_covered() -> None:
    assert len({c.id for c in CASES}) == len(CASES)
    assert {c.entry for c in CASES} == {FA, FR, MC, MU, MS, RD, WR, CC, CT, CS}


# ----------------------------------------------------------------------------- deliberately accepted input

def _fit_means(dataset: Dataset) -> dict:
    m = RandomEffectModel("linear", l2=1.0, hessian="full", tol=1e-12)
    m.update(dataset)
    return {k: m.coefficients(k) for k in m.entity_keys}


def test_duplicate_name_term_in_one_record_is_summed_everywhere() -> None:
    """Lambda Learner's coo -> csc sums repeated keys; so do from_records, from_arrays (CSR) and compat."""
    index = imap()
    twice = [("u", TrainingRecord(1.0, 1.0, 0.0, [Feature("a", "x", 1.0), Feature("b", "y", 0.5),
                                                  Feature("a", "x", 2.0)])),
             ("u", TrainingRecord(0.0, 1.0, 0.0, [Feature("a", "x", -1.0)]))]
    once = [("u", TrainingRecord(1.0, 1.0, 0.0, [Feature("a", "x", 3.0), Feature("b", "y", 0.5)])),
            ("u", TrainingRecord(0.0, 1.0, 0.0, [Feature("a", "x", -1.0)]))]
    got, want = _fit_means(Dataset.from_records(twice, index))["u"], _fit_means(Dataset.from_records(once, index))["u"]
    np.testing.assert_array_equal(got.feature_ids, want.feature_ids)
    np.testing.assert_allclose(got.mean, want.mean, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(got.precision, want.precision, rtol=1e-12)
    # the score sums them too
    scorer = RandomEffectModel("linear", l2=1.0)
    scorer.update(Dataset.from_records(once, index))
    np.testing.assert_allclose(scorer.score(Dataset.from_records(twice, index)),
                               scorer.score(Dataset.from_records(once, index)), rtol=1e-12)
    # the first column of X is a feature of its own (id 1), never merged into the intercept (id 0)
    dense = Dataset.from_arrays(["u", "u"], [1.0, 0.0], X=np.array([[0.5, 1.0], [0.0, 2.0]]))
    explicit = Dataset.from_arrays(["u", "u"], [1.0, 0.0], indptr=[0, 3, 5], feature_ids=[0, 1, 2, 0, 2],
                                   values=[1.0, 0.5, 1.0, 1.0, 2.0], intercept_id=None)
    np.testing.assert_allclose(_fit_means(dense)["u"].mean, _fit_means(explicit)["u"].mean, rtol=1e-12)
    # compat: one entry of 3.0 in the CSC matrix
    m = compat.IndexMap()
    m.batch_push([("a", "x"), ("b", "y")])
    data = compat.nt_domain_data_to_index_domain_data([r for _, r in twice], m)
    np.testing.assert_array_equal(data.X.toarray()[0], [1.0, 3.0, 0.5])


def test_empty_inputs_build_and_are_rejected_only_by_update() -> None:
    for empty in (Dataset.from_arrays([], []), Dataset.from_records([], imap()), read_ntv_jsonl(io.StringIO(""))):
        assert len(empty) == 0
    assert compat.nt_domain_data_to_index_domain_data([], compat.IndexMap()).X.shape == (0, 1)


def test_negative_zero_weight_is_zero_and_a_utf8_bom_is_skipped(tmp_path: Any) -> None:
    assert Dataset.from_arrays(ENT, LAB, X=XD, weight=[-0.0, 1.0, 1.0]).weight[0] == 0.0
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"uid": "a", "label": 1, "features": []}\n')
    [(key, _)] = read_ntv_jsonl(path)
    assert key == "a"


def test_object_arrays_of_numbers_are_accepted_and_integer_keys_beyond_int64_are_not() -> None:
    ds = Dataset.from_arrays(np.array([2**40, 1, 1], dtype=object), np.array([1.0, 0.0, 1.0], dtype=object), X=XD)
    assert ds.label.dtype == np.float64 and ds.entity_keys.tolist() == [1, 2**40]
    with pytest.raises(ValueError, match="example 0, field 'entity': value 1180591620717411303424 is outside the int64"):
        Dataset.from_arrays(np.array([2**70, 1, 1], dtype=object), LAB, X=XD)  # keys are saved as int64
    mixed_int_types = Dataset.from_arrays(np.array([1, np.int64(2), 2], dtype=object), LAB, X=XD)
    assert mixed_int_types.num_entities == 2


def test_finite_values_whose_sum_overflows_are_accepted_and_a_hidden_nan_is_not() -> None:
    # The finiteness checks skip their scan when a column's sum is finite; an overflowing sum of finite
    # values must fall back to the scan (and pass), and a NaN or an infinity is never hidden by the sum.
    big = [1e308, 1e308, 1e308]
    ds = Dataset.from_arrays(ENT, big, offset=big, indptr=[0, 1, 2, 3], feature_ids=[1, 1, 1], values=big,
                             intercept_id=None)
    assert np.all(np.isfinite(ds.values)) and ds.offset[0] == 1e308
    assert Dataset.from_arrays(ENT, LAB, X=XD, weight=big).weight[2] == 1e308
    for bad in ([np.inf, -np.inf, 1.0], [1e308, 1e308, np.nan], [1.0, -np.inf, 2.0]):
        with pytest.raises(ValueError, match="field 'values'.*must be finite"):
            Dataset.from_arrays(ENT, LAB, indptr=[0, 1, 2, 3], feature_ids=[1, 1, 1], values=bad)
        with pytest.raises(ValueError, match="field 'offset'.*must be finite"):
            Dataset.from_arrays(ENT, LAB, X=XD, offset=bad)
