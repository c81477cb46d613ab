"""The columnar NTV reader (``pyarrow.json``) against the pure-Python parser, which is its oracle: for every
input, ``read_ntv_jsonl`` gives the same records as ``iter_ntv_jsonl`` (bit for bit, the same Python types),
or the same error. Also: duplicate JSON keys are rejected, and writing to a path is atomic."""

from __future__ import annotations

import io
import json
import math
import os
import stat
import sys

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import lljax.data.ntv as ntv
from lljax import Feature, TrainingRecord, iter_ntv_jsonl, read_ntv_jsonl, write_ntv_jsonl
from lljax.data.ntv import ntv_arrow_table

FUZZ = settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def outcome(read):
    """``("ok", items as plain tuples)`` or ``("error", type, message)`` of ``read()``."""
    try:
        items = read()
    except (ValueError, TypeError) as exc:
        return ("error", type(exc), str(exc))
    return ("ok", [plain(key, record) for key, record in items])


def plain(key, record):
    """Everything of a record, with the type of each number and the sign of zeros (exact comparison)."""
    def num(x):
        return (type(x), x, math.copysign(1.0, x) if isinstance(x, float) else None)

    return (type(key), key, num(record.raw_label), num(record.weight), num(record.offset), record.context,
            [(f.name, f.term, num(f.value)) for f in record.features])


def both_ways(data: bytes, entity_field: str = "uid"):
    """The fast reader's outcome on ``data`` (a binary stream) and the pure-Python parser's."""
    fast = outcome(lambda: read_ntv_jsonl(io.BytesIO(data), entity_field))
    slow = outcome(lambda: list(iter_ntv_jsonl(io.BytesIO(data), entity_field)))
    return fast, slow


# ----------------------------------------------------------------------------- records written by the writer

finite = st.floats(allow_nan=False, allow_infinity=False)
words = st.text(max_size=6)


@st.composite
def records(draw, contexts=True):
    features = draw(st.lists(st.builds(Feature, words, words, finite), max_size=5))
    context = draw(st.none() | st.dictionaries(words, words | st.integers(), max_size=2)) if contexts else None
    return TrainingRecord(draw(finite), draw(st.floats(min_value=0.0, allow_infinity=False)), draw(finite),
                          features, context)


str_items = st.lists(st.tuples(st.text(max_size=8), records()), min_size=1, max_size=8)
int_items = st.lists(st.tuples(st.integers(-(2**63), 2**63 - 1), records()), min_size=1, max_size=8)
any_items = st.lists(st.tuples(st.text(max_size=8) | st.integers(-(2**70), 2**70), records()), max_size=8)


def written(items, entity_field="uid") -> bytes:
    buffer = io.StringIO()
    write_ntv_jsonl(buffer, items, entity_field=entity_field)
    return buffer.getvalue().encode("utf-8")


@FUZZ
@given(str_items | int_items | any_items, st.sampled_from(["uid", "memberId"]))
def test_written_files_read_the_same_both_ways(items, entity_field):
    fast, slow = both_ways(written(items, entity_field), entity_field)
    assert fast == slow
    assert fast[0] == "ok"


@FUZZ
@given(st.lists(st.tuples(st.text(max_size=8), records(False)), min_size=1, max_size=8)
       | st.lists(st.tuples(st.integers(-(2**63), 2**63 - 1), records(False)), min_size=1, max_size=8))
def test_writer_output_takes_the_columnar_path(items):
    """One key type within int64, no -0.0 in a column of floats, and no context (free-form objects, which
    pyarrow may not unify into one column type): pyarrow parses it (no fallback)."""
    data = written(items)
    zeros = [x for _, r in items for x in [r.raw_label, r.weight, r.offset, *(f.value for f in r.features)] if x == 0]
    if any(math.copysign(1.0, x) < 0 for x in zeros):
        return
    assert ntv_arrow_table(data) is not None


def test_no_fallback_on_a_usual_file(tmp_path, monkeypatch):
    items = [(f"u{i % 7}", TrainingRecord(float(i % 2), 1.0 + i, -0.25 * i,
                                           [Feature("n", f"t{i}", 0.5 * i), Feature("m", "", -1.0)]))
             for i in range(50)]
    items.append(("u0", TrainingRecord(1.0, 1.0, 0.0, [], context={"page": "feed", "slot": 3})))
    path = tmp_path / "data.jsonl"
    write_ntv_jsonl(path, items)
    expected = [plain(k, r) for k, r in iter_ntv_jsonl(path)]

    def no_python_parser(*args, **kwargs):
        raise AssertionError("fell back to the pure-Python parser")

    monkeypatch.setattr(ntv, "iter_ntv_jsonl", no_python_parser)
    for source in (path, str(path)):
        assert [plain(k, r) for k, r in read_ntv_jsonl(source)] == expected
    with open(path, "rb") as f:
        assert [plain(k, r) for k, r in read_ntv_jsonl(f)] == expected
    # CRLF line ends and a byte order mark: still columnar
    crlf = tmp_path / "crlf.jsonl"
    crlf.write_bytes(b"\xef\xbb\xbf" + path.read_bytes().replace(b"\n", b"\r\n"))
    assert [plain(k, r) for k, r in read_ntv_jsonl(crlf)] == expected


# ----------------------------------------------------------------------------- numbers and hand-made lines

number_tokens = st.one_of(
    st.integers(-(2**80), 2**80).map(str),
    finite.map(repr),
    st.sampled_from(["-0", "0", "-0.0", "1e-400", "-1e-400", "1e308", "1e309", "2e-308", "4.9e-324", "1E5",
                     "123456789012345678901234567890", "9223372036854775807", "9223372036854775808",
                     "-9223372036854775809", "0.1", "1.7976931348623157e308", "NaN", "-Infinity", "01", "1.",
                     ".5", "+1", "true", "null", '"1"', "[1]", "{}"]),
)


@FUZZ
@given(st.lists(st.tuples(number_tokens, number_tokens, number_tokens), min_size=1, max_size=4),
       st.sampled_from(["label", "weight", "offset", "value"]))
@example([("1", "2.5", "-0")], "value")
@example([("-0", "1", "1.5")], "label")
def test_number_tokens_read_the_same_both_ways(tokens, where):
    lines = []
    for a, b, c in tokens:
        fields = {"label": "1", "weight": "1.0", "offset": "0.0", "value": "1.5"}
        fields[where] = a
        other = "offset" if where != "offset" else "label"
        fields[other] = b if where != "weight" else fields[other]
        features = (f'[{{"name": "n", "term": "t", "value": {fields["value"]}}}, '
                    f'{{"name": "m", "term": "u", "value": {c}}}]')
        lines.append(f'{{"uid": "e", "label": {fields["label"]}, "weight": {fields["weight"]}, '
                     f'"offset": {fields["offset"]}, "features": {features}}}')
    fast, slow = both_ways(("\n".join(lines) + "\n").encode())
    assert fast == slow


LINE = '{"uid": "a", "label": 1, "weight": 2, "offset": -0.5, "features": [{"name": "n", "term": "t", "value": 3}]}'
ODD_INPUTS = [
    LINE + "\n" + LINE,  # no final newline
    LINE + "\n\n" + LINE + "\n",  # a blank line
    LINE + " \n" + LINE + "\n",  # trailing space
    "  " + LINE + "\n",
    LINE + " " + LINE + "\n",  # two objects on one line
    LINE + LINE + "\n",
    LINE[:30] + "\n" + LINE[30:] + "\n",  # one object over two lines
    LINE[:30] + "\n" + LINE[30:] + "\n" + LINE + LINE + "\n",  # ... and two on one line: as many rows as lines
    LINE + "\r" + LINE + "\n",  # a lone CR
    LINE + "\r\n" + LINE + "\r\n",
    '{"uid": 1, "label": 1, "features": []}\n{"uid": "b", "label": 1, "features": []}\n',  # mixed key types
    '{"uid": 1, "label": 1, "features": []}\n{"uid": 18446744073709551616, "label": 1, "features": []}\n',
    '{"uid": "a", "label": 1, "features": [], "context": {"k": 1}}\n{"uid": "b", "label": 1, "features": []}\n',
    '{"uid": "a", "label": 1, "features": [], "context": [1]}\n',
    '{"uid": "a", "label": 1, "features": [], "context": null}\n',
    '{"uid": "a", "label": 1, "features": [], "other": {"x": [1, "y"]}}\n',
    '{"uid": "a", "label": 1, "features": [null]}\n',
    '{"uid": "a", "label": 1, "features": [{"name": "n", "term": "t"}]}\n',
    '{"uid": "a", "label": 1, "features": [{"name": "n", "term": "t", "value": 1, "extra": 2}]}\n',
    '{"uid": "a", "label": 1, "features": [{"name": "n", "term": 5, "value": 1}]}\n',
    '{"uid": "a", "label": 1, "features": []}\n{"uid": "b", "label": 1}\n',
    '{"uid": "a", "label": true, "features": []}\n',
    '{"uid": "a", "label": 1, "weight": -1, "features": []}\n',
    '{"uid": "a", "label": 1, "weight": null, "offset": null, "features": []}\n',
    '{"uid": null, "label": 1, "features": []}\n',
    '{"uid": "a\\u0000b", "label": 1, "features": []}\n',
    '{"uid": "\\ud800", "label": 1, "features": []}\n',
    '{"uid": "caf\u00e9 \u2028 \U0001f600", "label": 1, "features": [{"name": "\u00e9", "term": "", "value": 1}]}\n',
    '{"uid": "a\tb", "label": 1, "features": []}\n',
    '{"label": 1, "features": [], "uid": "a", "label": 0}\n',
    '{"uid": "a", "label": 1, "features": [{"name": "n", "name": "m", "term": "t", "value": 1}]}\n',
    '{"uid": "a", "label": 1, "features": [], "context": {"k": 1, "k": 2}}\n',
    '{"uid": "a", "label": 1, "features": [], "other": {"k": 1, "k": 2}}\n',
    "{}\n",
    "[]\n",
    "\n\n",
]


@pytest.mark.parametrize("text", ODD_INPUTS)
def test_odd_inputs_read_the_same_both_ways(text, tmp_path):
    data = text.encode("utf-8", "surrogatepass")
    fast, slow = both_ways(data)
    assert fast == slow
    path = tmp_path / "odd.jsonl"
    path.write_bytes(data)
    assert outcome(lambda: read_ntv_jsonl(path)) == outcome(lambda: list(iter_ntv_jsonl(path)))


@st.composite
def mutated(draw) -> bytes:
    text = "\n".join([LINE] * draw(st.integers(1, 3))) + "\n"
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(text)))
        char = draw(st.characters() | st.sampled_from(list('{}[]":,-.0123456789eE\n\r tfn')))
        text = text[:at] + char + text[at + draw(st.integers(0, 1)):]
    return text.encode("utf-8", "surrogatepass")


@FUZZ
@given(mutated() | st.binary(max_size=200))
def test_mutated_and_arbitrary_bytes_read_the_same_both_ways(data):
    fast, slow = both_ways(data)
    assert fast == slow


def test_without_pyarrow_the_python_parser_reads(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.json", None)
    data = (LINE + "\n") * 3
    assert ntv_arrow_table(data.encode()) is None
    path = tmp_path / "d.jsonl"
    path.write_text(data)
    assert [k for k, _ in read_ntv_jsonl(path)] == ["a"] * 3


# ----------------------------------------------------------------------------- duplicate keys

@pytest.mark.parametrize("line, key", [
    ('{"uid": "a", "label": 1, "features": [], "label": 0}', "label"),
    ('{"uid": "a", "uid": "b", "label": 1, "features": []}', "uid"),
    ('{"uid": "a", "label": 1, "features": [{"name": "n", "term": "t", "value": 1, "value": 2}]}', "value"),
    ('{"uid": "a", "label": 1, "features": [], "context": {"k": 1, "k": 2}}', "k"),
    ('{"uid": "a", "label": 1, "features": [], "other": [{"x": 1, "x": 1}]}', "x"),
])
def test_duplicate_keys_are_rejected(tmp_path, line, key):
    path = tmp_path / "dup.jsonl"
    path.write_text(LINE + "\n" + line + "\n")
    for read in (lambda: read_ntv_jsonl(path), lambda: list(iter_ntv_jsonl(path)),
                 lambda: read_ntv_jsonl(io.BytesIO(path.read_bytes())), lambda: read_ntv_jsonl(io.StringIO(line))):
        with pytest.raises(ValueError, match=rf"line \d+, field '<json>'.*the key '{key}' appears twice"):
            read()


def test_writer_rejects_a_context_whose_keys_collide_in_json():
    with pytest.raises(ValueError, match=r"record 1, entity 'a', field 'context'.*both written as '1'"):
        write_ntv_jsonl(io.StringIO(), [("a", TrainingRecord(1.0, 1.0, 0.0, [], context={1: "x", "1": "y"}))])


# ----------------------------------------------------------------------------- atomic writes

def good(n):
    return [(f"u{i}", TrainingRecord(1.0, 1.0, 0.0, [Feature("n", "t", float(i))])) for i in range(n)]


def test_a_bad_record_leaves_an_existing_file_intact(tmp_path):
    path = tmp_path / "data.jsonl"
    assert write_ntv_jsonl(path, good(5)) == 5
    before = path.read_bytes()
    bad = good(3) + [("bad", TrainingRecord(float("nan"), 1.0, 0.0, []))] + good(2)
    with pytest.raises(ValueError, match="record 4, entity 'bad', field 'label'"):
        write_ntv_jsonl(path, bad)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["data.jsonl"]  # no temporary file left


def test_an_exception_from_the_items_leaves_the_file_intact(tmp_path):
    path = tmp_path / "data.jsonl"
    write_ntv_jsonl(path, good(2))
    before = path.read_bytes()

    def items():
        yield from good(3)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_ntv_jsonl(path, items())
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["data.jsonl"]


def test_atomic_write_replaces_through_a_symlink_with_umask_permissions(tmp_path):
    real = tmp_path / "real.jsonl"
    link = tmp_path / "link.jsonl"
    write_ntv_jsonl(real, good(1))
    link.symlink_to(real)
    old = os.umask(0o022)
    try:
        assert write_ntv_jsonl(link, good(3)) == 3
    finally:
        os.umask(old)
    assert link.is_symlink()
    assert [k for k, _ in read_ntv_jsonl(real)] == ["u0", "u1", "u2"]
    assert stat.S_IMODE(real.stat().st_mode) == 0o644
    assert json.loads(real.read_text().splitlines()[0])["uid"] == "u0"
