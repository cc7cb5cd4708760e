"""Canonical JSON (authz.audit.record.canonical_json) is the json module's text byte for byte,
whichever encoder wrote it: every hash in the chain, old and new, is of that text."""

from __future__ import annotations

import enum
import json
import math
import random
import struct
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from authz.audit.record import canonical_json

JSON_MODULE = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
)


def json_module(value: Any) -> str | type[Exception]:
    """What the json module writes, or the kind of error it raises."""
    try:
        return JSON_MODULE.encode(value)
    except (TypeError, ValueError) as exc:
        return TypeError if isinstance(exc, TypeError) else ValueError


def ours(value: Any) -> str | type[Exception]:
    try:
        return canonical_json(value)
    except (TypeError, ValueError) as exc:
        return TypeError if isinstance(exc, TypeError) else ValueError


def _floats() -> list[float]:
    """Floats where orjson's shortest form is written differently (1e-05 vs 0.00001, 1e-07 vs
    1e-7) and around json's switch to exponents (1e-4, 1e16), plus random bit patterns."""
    rng = random.Random(7)
    values = [0.0, -0.0, 1e-4, 1e-5, 9.99e-5, 1e-7, 1e-10, 1e15, 1e16, 1e21, 5e-324, 1.5e308]
    for exponent in range(-12, 23):
        values += [rng.uniform(1, 10) * 10.0**exponent for _ in range(200)]
    while len(values) < 20_000:
        value = struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))[0]
        if math.isfinite(value):
            values.append(value)
    return values


def test_every_float_is_written_as_the_json_module_writes_it() -> None:
    for value in _floats():
        for shaped in ({"k": value}, [value, -value], value):
            assert ours(shaped) == json_module(shaped), repr(value)


@pytest.mark.parametrize("code", range(128))
def test_every_ascii_character_is_escaped_as_the_json_module_escapes_it(code: int) -> None:
    text = f"a{chr(code)}b"
    assert ours({text: text}) == json_module({text: text})


@pytest.mark.parametrize(
    "value",
    [
        {"é": "ünïcödé", "\u2028": "\U0001f600"},  # not ASCII: \u escapes
        [2**64, -(2**63) - 1, 2**63 - 1, 2**64 - 1],  # integers beyond and at 64 bits
        {"b": 1, "a": [True, False, None], "A": {"z": [], "y": {}}},  # key order, null
        ["null", "1e-5]", "0.00001", "x\x7fy"],  # look-alikes in strings
        [float("nan")],
        {"x": float("inf")},
        {1: "an integer key"},
        {"when": datetime(2026, 12, 1, tzinfo=UTC)},  # json refuses a datetime
        {"set": {1, 2}},
        [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]] * 9,
    ],
)
def test_odd_values_are_written_or_refused_as_the_json_module_does(value: Any) -> None:
    assert ours(value) == json_module(value)


def test_deep_values_beyond_orjsons_limit_are_written_too() -> None:
    deep: Any = 1
    for _ in range(300):  # orjson stops at 254 levels; the json module goes on
        deep = [deep]
    assert ours(deep) == json_module(deep)


class Colour(enum.Enum):
    RED = "red"


class Level(enum.StrEnum):
    HIGH = "high"


def test_uuids_and_plain_enum_members_are_written_as_their_values() -> None:
    """The one difference: orjson writes these (the json module refuses them). A string enum,
    a str subclass, is written as its string by both."""
    value = uuid.UUID("01234567-89ab-cdef-0123-456789abcdef")
    assert canonical_json({"id": value}) == '{"id":"01234567-89ab-cdef-0123-456789abcdef"}'
    assert canonical_json([Colour.RED]) == '["red"]'
    assert ours([Level.HIGH]) == json_module([Level.HIGH]) == '["high"]'


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(), children, max_size=5)
    ),
    max_leaves=30,
)


@settings(max_examples=400, deadline=None, derandomize=True)
@given(_JSON)
def test_any_json_value_is_written_or_refused_as_the_json_module_does(value: Any) -> None:
    assert ours(value) == json_module(value)
