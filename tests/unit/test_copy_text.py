"""COPY text formatting of the sink's staging rows."""

import math

import pytest

from sinks.copy_text import field, lines


@pytest.mark.parametrize("value, text", [
    (None, "\\N"), ("a\tb\nc\\d\re", "a\\tb\\nc\\\\d\\re"), ("\\N", "\\\\N"), (True, "t"),
    (False, "f"), (-(2 ** 63), "-9223372036854775808"), (1.5e-300, "1.5e-300"),
    (math.nan, "NaN"), (math.inf, "Infinity"), (-math.inf, "-Infinity"), (-0.0, "-0.0"),
    ("ünïcødé 𝄞", "ünïcødé 𝄞"),
])
def test_field(value: object, text: str) -> None:
    assert field(value) == text


def test_lines_put_the_site_first() -> None:
    assert lines("a", [{"x": 1, "y": None}, {"x": 2, "y": "q"}], ["x", "y"]) == "a\t1\t\\N\na\t2\tq\n"


def test_unknown_type_is_refused() -> None:
    with pytest.raises(TypeError):
        field(b"bytes")
