"""Fuzz of the NTV JSON-lines reader: whatever the input, only the documented errors escape.

``iter_ntv_jsonl`` documents ``ValueError`` (bad UTF-8, bad JSON, missing fields, non-finite
numbers, negative weights) and ``TypeError`` (wrong types), each naming the file and the line.
Inputs: arbitrary text, arbitrary bytes (text and binary streams, and files on disk), JSON objects
whose fields hold arbitrary JSON values, and valid lines with random edits. For every input the
reader either returns well-formed records, or raises one of the two documented errors naming the
*first* bad line, after yielding every record before it.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import tempfile

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from lljax import Feature, TrainingRecord, iter_ntv_jsonl, read_ntv_jsonl

FUZZ = settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
LINE = re.compile(r"^(?P<source>.*?) line (?P<line>\d+)[, ]")
VALID = ('{"uid": "e1", "label": 1, "weight": 2.0, "offset": -0.5, "features": '
         '[{"name": "n", "term": "t", "value": 1.5}, {"name": "m", "term": "", "value": -2}], "context": {"k": [1]}}')


def assert_well_formed(items: list) -> None:
    for key, record in items:
        assert type(key) in (str, int)
        assert isinstance(record, TrainingRecord)
        for number in (record.raw_label, record.weight, record.offset):
            assert type(number) is float and math.isfinite(number)
        assert record.weight >= 0
        assert record.context is None or isinstance(record.context, dict)
        for feature in record.features:
            assert isinstance(feature, Feature)
            assert type(feature.name) is str and type(feature.term) is str
            assert type(feature.value) is float and math.isfinite(feature.value)


def lines_of(content: str | bytes) -> list:
    """The lines the reader sees in a stream: split after each newline only."""
    return (io.BytesIO if isinstance(content, bytes) else io.StringIO)(content).readlines()


def read_stream(content: str | bytes) -> None:
    """Read ``content`` as a stream; on an error check it is documented and names the first bad line."""
    stream = (io.BytesIO if isinstance(content, bytes) else io.StringIO)(content)
    seen: list = []
    try:
        for item in iter_ntv_jsonl(stream):
            seen.append(item)
    except (ValueError, TypeError) as exc:
        assert type(exc) in (ValueError, TypeError), f"undocumented {type(exc).__name__}: {exc}"
        match = LINE.match(str(exc))
        assert match and match["source"] == "<stream>", str(exc)
        assert "field '" in str(exc), str(exc)
        bad = int(match["line"])
        lines = lines_of(content)
        assert 1 <= bad <= len(lines)
        good_before = [line for line in lines[: bad - 1] if line.strip()]
        assert len(seen) == len(good_before)  # every earlier non-blank line was a record
        # after a blank line, so that a byte order mark on it is not skipped as it is on line 1
        alone = (b"\n" if isinstance(content, bytes) else "\n") + lines[bad - 1]
        with_bad_line_alone = (io.BytesIO if isinstance(content, bytes) else io.StringIO)(alone)
        try:
            read_ntv_jsonl(with_bad_line_alone)
        except type(exc):
            pass
        else:
            raise AssertionError(f"line {bad} alone reads fine, but {exc}")
    assert_well_formed(seen)


# ----------------------------------------------------------------------------- arbitrary text and bytes

@FUZZ
@given(st.text())
@example("[" * 50_000 + "]" * 50_000)
@example('{"uid": 1, "label": ' + "9" * 5000 + ', "features": []}')
@example("\ufeff" + VALID + "\n\ufeff" + VALID)
@example("\n\n  \n")
def test_arbitrary_text(text):
    read_stream(text)


@FUZZ
@given(st.binary())
@example(b'{"uid": "\xff", "label": 1, "features": []}')
@example(VALID.encode("utf-16"))
@example(b"\xef\xbb\xbf" + VALID.encode())
def test_arbitrary_bytes(data):
    read_stream(data)


@FUZZ
@given(st.lists(st.one_of(st.binary(max_size=40), st.just(VALID.encode())), max_size=6))
def test_files_on_disk_name_the_path_and_line(chunks):
    """Read by path (UTF-8, universal newlines): errors name the path; records are well formed."""
    fd, path = tempfile.mkstemp(suffix=".jsonl")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(b"\n".join(chunks))
        try:
            items = read_ntv_jsonl(path)
        except (ValueError, TypeError) as exc:
            assert type(exc) in (ValueError, TypeError), f"undocumented {type(exc).__name__}: {exc}"
            match = LINE.match(str(exc))
            assert match and match["source"] == path, str(exc)
        else:
            assert_well_formed(items)
    finally:
        os.unlink(path)


# ----------------------------------------------------------------------------- structured and mutated records

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**80), 2**80), st.floats(), st.text(max_size=6))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                                 st.dictionaries(st.text(max_size=4), inner,
                                                                                 max_size=3)), max_leaves=8)
feature_objects = st.fixed_dictionaries({}, optional={"name": json_values | st.text(max_size=4),
                                                      "term": json_values | st.text(max_size=4),
                                                      "value": json_values | st.floats()})
record_objects = st.fixed_dictionaries({}, optional={
    "uid": json_values | st.integers() | st.text(max_size=4),
    "label": json_values | st.floats(),
    "weight": json_values | st.floats(),
    "offset": json_values | st.floats(),
    "features": json_values | st.lists(feature_objects | json_values, max_size=4),
    "context": json_values,
    "other": json_values,
})


@FUZZ
@given(st.lists(record_objects | json_values, min_size=1, max_size=4))
def test_json_objects_with_arbitrary_field_values(objects):
    read_stream("\n".join(json.dumps(obj, allow_nan=True) for obj in objects) + "\n")


@st.composite
def mutated(draw) -> str:
    """A few valid lines with random deletions, insertions and replacements of characters."""
    text = "\n".join([VALID] * draw(st.integers(1, 3)))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(text)))
        edit = draw(st.sampled_from(["delete", "insert", "replace"]))
        char = draw(st.characters() | st.sampled_from(list('{}[]":,-.0123456789eE\n tfn')))
        if edit == "delete":
            text = text[:at] + text[at + 1:]
        elif edit == "insert":
            text = text[:at] + char + text[at:]
        else:
            text = text[:at] + char + text[at + 1:]
    return text


@FUZZ
@given(mutated())
def test_mutated_valid_lines(text):
    read_stream(text)


def test_valid_line_reads() -> None:
    """The seed of the mutations is itself valid (so mutations start from a real record)."""
    [(key, record)] = read_ntv_jsonl(io.StringIO(VALID))
    assert key == "e1" and record.weight == 2.0 and [f.name_term for f in record.features] == [("n", "t"),
                                                                                                ("m", "")]
