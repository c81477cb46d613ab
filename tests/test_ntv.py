"""Tests for lljax.data.ntv: Feature, TrainingRecord, IndexMap (vs Lambda Learner) and NTV JSON lines."""

import io
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from linkedin.learner.ds.feature import Feature as LLFeature
from linkedin.learner.ds.index_map import IndexMap as LLIndexMap
from linkedin.learner.ds.record import TrainingRecord as LLTrainingRecord

from lljax.data.ntv import Feature, IndexMap, TrainingRecord, iter_ntv_jsonl, read_ntv_jsonl, write_ntv_jsonl

# ---------------------------------------------------------------------------
# Strategies
# ---------------------------------------------------------------------------

# Small alphabets so that name-terms collide often (and sometimes hit the intercept).
names = st.sampled_from(["a", "b", "intercept", "ads.creative.id"])
terms = st.sampled_from(["x", "y", "intercept", "13126317", ""])
name_term_lists = st.lists(st.tuples(names, terms), max_size=30)
finite_floats = st.floats(allow_nan=False, allow_infinity=False)
text = st.text(max_size=8)


@st.composite
def records(draw):
    features = draw(st.lists(st.builds(Feature, text, text, finite_floats), max_size=6))
    context = draw(st.none() | st.dictionaries(text, text, max_size=3))
    return TrainingRecord(
        label=draw(finite_floats),
        weight=draw(st.floats(min_value=0.0, allow_infinity=False)),
        offset=draw(finite_floats),
        features=features,
        context=context,
    )


entity_keys = st.text(max_size=10) | st.integers(min_value=-(2**70), max_value=2**70)
ntv_items = st.lists(st.tuples(entity_keys, records()), max_size=8)


def assert_same_record(actual: TrainingRecord, expected: TrainingRecord) -> None:
    """Exact (bitwise for floats) equality of two records."""
    assert type(actual.raw_label) is float
    assert actual.raw_label == expected.raw_label
    assert actual.weight == expected.weight
    assert actual.offset == expected.offset
    assert actual.context == expected.context
    assert [(f.name, f.term, f.value) for f in actual.features] == [(f.name, f.term, f.value) for f in expected.features]
    # -0.0 must stay -0.0.
    assert [math.copysign(1, f.value) for f in actual.features] == [math.copysign(1, f.value) for f in expected.features]


# ---------------------------------------------------------------------------
# Feature and TrainingRecord
# ---------------------------------------------------------------------------


def test_feature_name_term_eq_and_repr():
    f = Feature("n", "t", 1.0)
    assert f.name_term == ("n", "t")
    assert f == Feature("n", "t", 1.0 + 1e-12)  # isclose, as LL
    assert f != Feature("n", "t", 1.1)
    assert f != Feature("n", "u", 1.0)
    assert f != Feature("m", "t", 1.0)
    assert f != ("n", "t", 1.0)
    assert repr(f) == "Feature(name='n', term='t', value=1.0)"
    with pytest.raises(TypeError):
        hash(f)


@pytest.mark.parametrize(
    "a, b", [(1.0, 1.0 + 1e-12), (1.0, 1.1), (0.0, 1e-300), (-2.5, -2.5), (1e9, 1e9 + 1)]
)
def test_feature_equality_matches_lambda_learner(a, b):
    ours = Feature("n", "t", a) == Feature("n", "t", b)
    theirs = LLFeature("n", "t", a) == LLFeature("n", "t", b)
    assert ours == theirs


@pytest.mark.parametrize("raw", [1, 1.0, True, 0, 0.0, -1, -1.0, 2, 0.5, 1.0000001, -0.0])
def test_training_record_label_rule_matches_lambda_learner(raw):
    ours = TrainingRecord(raw, 1.0, 0.0, [])
    theirs = LLTrainingRecord(raw, 1.0, 0.0, [])
    assert ours.label == theirs.label
    assert ours.label in (1, -1)
    assert ours.raw_label is raw


def test_training_record_fields_and_name_terms():
    features = [Feature("a", "x", 1.0), Feature("b", "y", 2.0), Feature("a", "x", 3.0), Feature("c", "z", 4.0)]
    ll_features = [LLFeature(f.name, f.term, f.value) for f in features]
    record = TrainingRecord(0.0, 2.0, -0.5, features, context={"k": "v"})
    assert record.name_terms == [("a", "x"), ("b", "y"), ("c", "z")]
    assert record.name_terms == LLTrainingRecord(0.0, 2.0, -0.5, ll_features).name_terms
    assert (record.weight, record.offset, record.context) == (2.0, -0.5, {"k": "v"})
    assert record.features is features
    assert TrainingRecord(1, 1, 0, []).context is None
    assert "label=0.0" in repr(record) and "Feature(name='a'" in repr(record)


# ---------------------------------------------------------------------------
# IndexMap vs Lambda Learner
# ---------------------------------------------------------------------------


def assert_same_index_map(ours: IndexMap, theirs: LLIndexMap) -> None:
    assert len(ours) == len(theirs)
    assert repr(ours) == repr(theirs)
    for i in range(len(theirs)):
        nt = theirs.get_nt(i)
        assert ours.get_nt(i) == nt
        assert ours.get_index(nt) == theirs.get_index(nt) == i
        assert nt in ours
    assert ours.intercept_nt == theirs.intercept_nt
    assert ours.intercept_index == theirs.intercept_index == 0


@settings(max_examples=200)
@given(name_term_lists, st.lists(name_term_lists, max_size=4))
def test_index_map_push_and_batch_push_match_lambda_learner(singles, batches):
    ours, theirs = IndexMap(), LLIndexMap()
    for nt in singles:
        ours.push(nt)
        theirs.push(nt)
    for batch in batches:
        assert ours.batch_push(iter(batch)) == theirs.batch_push(iter(batch))
    assert_same_index_map(ours, theirs)
    assert ours.name_terms == [theirs.get_nt(i) for i in range(len(theirs))]


def test_index_map_custom_intercept_matches_lambda_learner():
    ours, theirs = IndexMap("bias", "b"), LLIndexMap("bias", "b")
    ours.batch_push([("a", "x"), ("bias", "b")])
    theirs.batch_push([("a", "x"), ("bias", "b")])
    assert_same_index_map(ours, theirs)
    assert ours.name_terms == [("bias", "b"), ("a", "x")]


def test_index_map_push_returns_index():
    imap = IndexMap()
    assert imap.push(("a", "x")) == 1
    assert imap.push(("b", "y")) == 2
    assert imap.push(("a", "x")) == 1
    assert imap.push(imap.intercept_nt) == 0


def test_index_map_unknown_keys_raise_index_error():
    imap = IndexMap()
    imap.push(("a", "x"))
    with pytest.raises(IndexError, match=r"\('zz', 'q'\)"):
        imap.get_index(("zz", "q"))
    with pytest.raises(IndexError, match="5"):
        imap.get_nt(5)
    for bad in (-1, 2, 1.0, "1"):
        with pytest.raises(IndexError):
            imap.get_nt(bad)
    assert imap.get_nt(np.int64(1)) == ("a", "x")
    assert ("zz", "q") not in imap
    assert ["a", "x"] not in imap  # unhashable: not contained, no crash
    assert ("a", "x") in imap


def test_index_map_get_indices():
    imap = IndexMap()
    imap.batch_push([("a", "x"), ("b", "y"), ("c", "z")])
    indices = imap.get_indices([("c", "z"), ("a", "x"), ("intercept", "intercept"), ("c", "z")])
    assert indices.dtype == np.int64
    np.testing.assert_array_equal(indices, [3, 1, 0, 3])
    assert imap.get_indices([]).shape == (0,)
    assert imap.get_indices(nt for nt in [("b", "y")]).tolist() == [2]
    with pytest.raises(IndexError, match=r"\('nope', 'n'\)"):
        imap.get_indices([("a", "x"), ("nope", "n"), ("never", "v")])


@settings(max_examples=200)
@given(
    st.lists(st.lists(st.tuples(names, terms, finite_floats), max_size=5), max_size=5),
    st.lists(st.tuples(names, terms, finite_floats), max_size=6),
    st.lists(st.tuples(names, terms, finite_floats), max_size=6),
)
def test_from_records_means_and_variances_matches_lambda_learner(record_features, means, variances):
    ours_args = (
        [TrainingRecord(1.0, 1.0, 0.0, [Feature(*f) for f in fs]) for fs in record_features],
        [Feature(*f) for f in means],
        [Feature(*f) for f in variances],
    )
    ll_args = (
        [LLTrainingRecord(1.0, 1.0, 0.0, [LLFeature(*f) for f in fs]) for fs in record_features],
        [LLFeature(*f) for f in means],
        [LLFeature(*f) for f in variances],
    )
    ours, ours_meta = IndexMap.from_records_means_and_variances(*ours_args)
    theirs, theirs_meta = LLIndexMap.from_records_means_and_variances(*ll_args)
    assert_same_index_map(ours, theirs)
    assert ours_meta == theirs_meta
    assert set(ours_meta) == {"num_nts_in_both", "num_nts_in_coeffs_only", "num_nts_in_records_only"}


def test_from_records_means_and_variances_accepts_generators():
    records_ = [TrainingRecord(1, 1, 0, [Feature("a", "x", 1.0), Feature("b", "y", 1.0)])]
    imap, meta = IndexMap.from_records_means_and_variances(
        iter(records_), (f for f in [Feature("b", "y", 0.1)]), iter([Feature("c", "z", 1.0)])
    )
    assert imap.name_terms == [("intercept", "intercept"), ("b", "y"), ("c", "z"), ("a", "x")]
    assert meta == {"num_nts_in_both": 1, "num_nts_in_coeffs_only": 1, "num_nts_in_records_only": 1}


@settings(max_examples=200)
@given(name_term_lists, st.tuples(text, text))
def test_index_map_dict_round_trip_through_json(name_terms, intercept):
    imap = IndexMap(*intercept)
    imap.batch_push(name_terms)
    restored = IndexMap.from_dict(json.loads(json.dumps(imap.to_dict())))
    assert restored == imap
    assert restored.name_terms == imap.name_terms
    assert restored.intercept_nt == imap.intercept_nt


def test_index_map_equality():
    a, b = IndexMap(), IndexMap()
    a.batch_push([("a", "x"), ("b", "y")])
    b.batch_push([("a", "x"), ("b", "y")])
    assert a == b
    b.push(("c", "z"))
    assert a != b
    c = IndexMap()
    c.batch_push([("b", "y"), ("a", "x")])
    assert a != c  # same keys, different indices
    assert IndexMap() != IndexMap("bias", "b")
    assert IndexMap() != "not an index map"
    with pytest.raises(TypeError):
        hash(a)


@pytest.mark.parametrize(
    "name_terms, error, fragment",
    [
        ([["a", "x"]], ValueError, "name_terms[0]"),
        ([["intercept", "intercept"], ["a", "x"], ["a", "x"]], ValueError, "name_terms[2]"),
        ([["intercept", "intercept"], ["a"]], TypeError, "name_terms[1]"),
        ([["intercept", "intercept"], "ax"], TypeError, "name_terms[1]"),
    ],
)
def test_index_map_from_dict_rejects_bad_input(name_terms, error, fragment):
    data = {"intercept_name": "intercept", "intercept_term": "intercept", "name_terms": name_terms}
    with pytest.raises(error) as info:
        IndexMap.from_dict(data)
    assert fragment in str(info.value)


# ---------------------------------------------------------------------------
# NTV JSON lines: round trip and defaults
# ---------------------------------------------------------------------------


@settings(max_examples=200)
@given(ntv_items, st.sampled_from(["uid", "memberId"]))
def test_ntv_round_trip_is_exact(items, entity_field):
    buffer = io.StringIO()
    assert write_ntv_jsonl(buffer, items, entity_field=entity_field) == len(items)
    buffer.seek(0)
    restored = read_ntv_jsonl(buffer, entity_field=entity_field)
    assert len(restored) == len(items)
    for (entity, record), (entity_back, record_back) in zip(items, restored):
        assert entity_back == entity and type(entity_back) is type(entity)
        assert_same_record(record_back, record)


def test_ntv_round_trip_through_path(tmp_path):
    items = [
        ("42", TrainingRecord(0, 2.5, -0.3, [Feature("n", "t", 1.0), Feature("m", "u", 0.1)])),
        (7, TrainingRecord(1.0, 0.0, 1e-300, [], context={"page": "feed"})),
    ]
    path = tmp_path / "data.jsonl"
    write_ntv_jsonl(path, items)
    lines = path.read_text().splitlines()
    assert json.loads(lines[0]) == {
        "uid": "42",
        "label": 0.0,  # raw label, not -1
        "weight": 2.5,
        "offset": -0.3,
        "features": [{"name": "n", "term": "t", "value": 1.0}, {"name": "m", "term": "u", "value": 0.1}],
    }
    assert json.loads(lines[1])["context"] == {"page": "feed"}
    for read in (read_ntv_jsonl(path), read_ntv_jsonl(str(path)), list(iter_ntv_jsonl(path))):
        assert [key for key, _ in read] == ["42", 7]
        for (_, record), (_, back) in zip(items, read):
            assert_same_record(back, TrainingRecord(float(record.raw_label), record.weight, record.offset,
                                                    record.features, record.context))
    assert read_ntv_jsonl(path)[0][1].label == -1


def test_ntv_writer_accepts_numpy_scalars():
    features = [Feature("n", "t", np.float32(0.5))]
    items = [(np.int64(3), TrainingRecord(np.int64(1), np.float64(2.0), np.float32(-1.5), features))]
    buffer = io.StringIO()
    write_ntv_jsonl(buffer, items)
    buffer.seek(0)
    [(entity, record)] = read_ntv_jsonl(buffer)
    assert entity == 3 and type(entity) is int
    assert (record.raw_label, record.weight, record.offset, record.features[0].value) == (1.0, 2.0, -1.5, 0.5)


def test_ntv_defaults_blank_lines_and_extra_keys():
    source = io.StringIO(
        '\n{"uid": "a", "label": 1, "features": []}\n   \n'
        '{"uid": 5, "label": 0, "weight": null, "offset": null, "features": [], "extra": [1, 2]}\n\n'
    )
    items = read_ntv_jsonl(source)
    assert [key for key, _ in items] == ["a", 5]
    for _, record in items:
        assert (record.weight, record.offset, record.context) == (1.0, 0.0, None)
        assert record.features == []
    assert [record.label for _, record in items] == [1, -1]
    assert not source.closed  # file objects are left open


def test_ntv_iter_is_lazy():
    source = io.StringIO('{"uid": "a", "label": 1, "features": []}\nnot json\n')
    iterator = iter_ntv_jsonl(source)
    key, _ = next(iterator)
    assert key == "a"
    with pytest.raises(ValueError, match="line 2"):
        next(iterator)


def test_ntv_empty_file():
    assert read_ntv_jsonl(io.StringIO("")) == []
    buffer = io.StringIO()
    assert write_ntv_jsonl(buffer, []) == 0
    assert buffer.getvalue() == ""


# ---------------------------------------------------------------------------
# NTV JSON lines: bad input
# ---------------------------------------------------------------------------

GOOD_LINE = '{"uid": "ok", "label": 1, "features": [{"name": "n", "term": "t", "value": 1.0}]}'
F = '{"name": "n", "term": "t", "value": 1.0}'


def line_with(**fields) -> str:
    """A JSON line for entity "e7" with the given fields replacing the good defaults (raw JSON text values)."""
    base = {"uid": '"e7"', "label": "1", "weight": "1.0", "offset": "0.0", "features": f"[{F}, {F}, {F}]"}
    base.update(fields)
    return "{" + ", ".join(f'"{key}": {value}' for key, value in base.items() if value is not None) + "}"


BAD_LINES = [
    # (line, error, field, value fragment, entity is known)
    ('{"uid": "e7", "label": 1, ', ValueError, "<json>", '{"uid": "e7"', False),
    ("[1, 2]", TypeError, "<record>", "[1, 2]", False),
    ('"just a string"', TypeError, "<record>", "just a string", False),
    (line_with(uid=None), ValueError, "uid", "<missing>", False),
    (line_with(uid="1.5"), TypeError, "uid", "1.5", False),
    (line_with(uid="true"), TypeError, "uid", "True", False),
    (line_with(label=None), ValueError, "label", "<missing>", True),
    (line_with(label="null"), ValueError, "label", "<missing>", True),
    (line_with(label='"1"'), TypeError, "label", "'1'", True),
    (line_with(label="true"), TypeError, "label", "True", True),
    (line_with(label="NaN"), ValueError, "label", "nan", True),
    (line_with(label="Infinity"), ValueError, "label", "inf", True),
    (line_with(label="1" + "0" * 400), ValueError, "label", "1000", True),
    (line_with(label="1e400"), ValueError, "label", "inf", True),
    (line_with(weight="-Infinity"), ValueError, "weight", "-inf", True),
    (line_with(weight="-0.5"), ValueError, "weight", "-0.5", True),
    (line_with(weight="false"), TypeError, "weight", "False", True),
    (line_with(weight="[1]"), TypeError, "weight", "[1]", True),
    (line_with(offset="NaN"), ValueError, "offset", "nan", True),
    (line_with(offset='"0"'), TypeError, "offset", "'0'", True),
    (line_with(features=None), ValueError, "features", "<missing>", True),
    (line_with(features=F), TypeError, "features", "'name'", True),
    (line_with(features='"abc"'), TypeError, "features", "'abc'", True),
    (line_with(features=f"[{F}, {F}, 3]"), TypeError, "features[2]", "3", True),
    (line_with(features=f'[{F}, {F}, {{"name": "n", "term": "t"}}]'), ValueError, "features[2].value", "<missing>", True),
    (line_with(features=f'[{F}, {{"term": "t", "value": 1}}]'), ValueError, "features[1].name", "<missing>", True),
    (line_with(features='[{"name": "n", "value": 1}]'), ValueError, "features[0].term", "<missing>", True),
    (line_with(features=f'[{F}, {F}, {{"name": 3, "term": "t", "value": 1}}]'), TypeError, "features[2].name", "3", True),
    (line_with(features=f'[{F}, {F}, {{"name": "n", "term": 4, "value": 1}}]'), TypeError, "features[2].term", "4", True),
    (line_with(features=f'[{F}, {F}, {{"name": "n", "term": "t", "value": "1"}}]'), TypeError, "features[2].value", "'1'", True),
    (line_with(features=f'[{F}, {F}, {{"name": "n", "term": "t", "value": true}}]'), TypeError, "features[2].value", "True", True),
    (line_with(features=f'[{F}, {F}, {{"name": "n", "term": "t", "value": NaN}}]'), ValueError, "features[2].value", "nan", True),
    (line_with(features=f'[{F}, {{"name": "n", "term": "t", "value": -Infinity}}]'), ValueError, "features[1].value", "-inf", True),
    (line_with(context="[1]"), TypeError, "context", "[1]", True),
]


@pytest.mark.parametrize("line, error, field, value, entity_known", BAD_LINES)
def test_ntv_bad_input_names_file_line_entity_field_and_value(tmp_path, line, error, field, value, entity_known):
    path = tmp_path / "bad.jsonl"
    path.write_text(GOOD_LINE + "\n\n" + line + "\n" + GOOD_LINE + "\n")
    with pytest.raises(error) as info:
        read_ntv_jsonl(path)
    message = str(info.value)
    assert f"{path} line 3" in message
    assert f"field {field!r}" in message
    assert value in message
    assert ("entity 'e7'" in message) == entity_known


def test_ntv_bad_input_in_file_object_names_stream():
    with pytest.raises(ValueError, match=r"<stream> line 1, entity 'x', field 'weight'"):
        read_ntv_jsonl(io.StringIO('{"uid": "x", "label": 0, "weight": -1, "features": []}'))


def test_ntv_custom_entity_field_is_required():
    line = '{"uid": "x", "label": 0, "features": []}'
    with pytest.raises(ValueError, match="field 'memberId'"):
        read_ntv_jsonl(io.StringIO(line), entity_field="memberId")
    [(key, _)] = read_ntv_jsonl(io.StringIO(line.replace("uid", "memberId")), entity_field="memberId")
    assert key == "x"


@pytest.mark.parametrize(
    "record, error, field",
    [
        (TrainingRecord(float("nan"), 1.0, 0.0, []), ValueError, "label"),
        (TrainingRecord(1.0, -2.0, 0.0, []), ValueError, "weight"),
        (TrainingRecord(1.0, 1.0, float("inf"), []), ValueError, "offset"),
        (TrainingRecord("1", 1.0, 0.0, []), TypeError, "label"),
        (TrainingRecord(1.0, 1.0, 0.0, [Feature("a", "x", 1.0), Feature("b", "y", float("nan"))]), ValueError,
         "features[1].value"),
        (TrainingRecord(1.0, 1.0, 0.0, [Feature("a", 5, 1.0)]), TypeError, "features[0].term"),
    ],
)
def test_ntv_writer_rejects_what_the_reader_would(record, error, field):
    buffer = io.StringIO()
    items = [("good", TrainingRecord(1.0, 1.0, 0.0, [])), ("bad", record)]
    with pytest.raises(error) as info:
        write_ntv_jsonl(buffer, items)
    message = str(info.value)
    assert "record 2" in message and "entity 'bad'" in message and f"field {field!r}" in message
    assert buffer.getvalue().count("\n") == 1  # the good record was written, the bad one was not


def test_ntv_writer_rejects_bad_entity_key():
    with pytest.raises(TypeError, match="field 'uid'"):
        write_ntv_jsonl(io.StringIO(), [(1.5, TrainingRecord(1.0, 1.0, 0.0, []))])
