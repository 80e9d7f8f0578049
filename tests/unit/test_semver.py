"""schemas.semver.Version against semver.org 2.0.0: syntax, precedence (§11), next_minor."""

from __future__ import annotations

import dataclasses
import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.semver import Version

PROPERTY = settings(database=None, deadline=None, max_examples=300)

# semver.org 2.0.0 §11, the spec's own examples.
SPEC_CHAIN = [
    "1.0.0-alpha",
    "1.0.0-alpha.1",
    "1.0.0-alpha.beta",
    "1.0.0-beta",
    "1.0.0-beta.2",
    "1.0.0-beta.11",
    "1.0.0-rc.1",
    "1.0.0",
]
NUMERIC_CHAIN = ["1.0.0", "1.9.0", "1.10.0", "1.11.0", "2.0.0", "2.1.0", "2.1.1"]


# --- strategies ---------------------------------------------------------------------------------

numbers = st.one_of(st.integers(0, 3), st.integers(0, 10**12))
numeric_ids = st.one_of(st.integers(0, 12), st.integers(0, 10**9)).map(str)
alnum_ids = st.text(alphabet="019azAZ-", min_size=1, max_size=4).filter(lambda s: not s.isdigit())
identifiers = st.one_of(numeric_ids, alnum_ids)
builds = st.text(alphabet="0019azAZ-", min_size=1, max_size=4)  # leading zeros are fine here


@st.composite
def version_texts(draw: st.DrawFn) -> str:
    text = ".".join(str(draw(numbers)) for _ in range(3))
    pre = draw(st.lists(identifiers, max_size=4))
    if pre:
        text += "-" + ".".join(pre)
    build = draw(st.lists(builds, max_size=3))
    if build:
        text += "+" + ".".join(build)
    return text


def reference_compare(a: str, b: str) -> int:
    """semver.org §11 transcribed literally, independent of Version; -1, 0 or 1."""

    def split(text: str) -> tuple[list[int], list[str]]:
        core, _, pre = text.split("+")[0].partition("-")
        return [int(x) for x in core.split(".")], pre.split(".") if pre else []

    def sign(x: int) -> int:
        return (x > 0) - (x < 0)

    (core_a, pre_a), (core_b, pre_b) = split(a), split(b)
    for x, y in zip(core_a, core_b, strict=True):  # §11.2: numerically, left to right
        if x != y:
            return sign(x - y)
    if not pre_a or not pre_b:  # §11.3: a prerelease has lower precedence than the release
        return sign(len(pre_b) - len(pre_a)) if pre_a or pre_b else 0
    for x, y in zip(pre_a, pre_b, strict=False):  # §11.4
        if x == y:
            continue
        if x.isdigit() and y.isdigit():
            return sign(int(x) - int(y))
        if x.isdigit() != y.isdigit():
            return -1 if x.isdigit() else 1  # numeric < alphanumeric
        return -1 if x < y else 1  # ASCII order
    return sign(len(pre_a) - len(pre_b))  # more fields wins when all before are equal


def compare(a: Version, b: Version) -> int:
    return (a > b) - (a < b)


# --- parse / str -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "fields"),
    [
        ("0.0.0", (0, 0, 0, (), ())),
        ("1.2.3", (1, 2, 3, (), ())),
        ("10.20.30", (10, 20, 30, (), ())),
        ("1.0.0-alpha.1", (1, 0, 0, ("alpha", "1"), ())),
        ("1.0.0-0A.is.legal", (1, 0, 0, ("0A", "is", "legal"), ())),
        ("1.0.0-x-y-z.--", (1, 0, 0, ("x-y-z", "--"), ())),
        ("1.0.0+20130313144700", (1, 0, 0, (), ("20130313144700",))),
        ("1.0.0-beta+exp.sha.5114f85", (1, 0, 0, ("beta",), ("exp", "sha", "5114f85"))),
        ("1.0.0+21AF26D3----117B344092BD", (1, 0, 0, (), ("21AF26D3----117B344092BD",))),
        ("1.0.0+001", (1, 0, 0, (), ("001",))),
        ("99999999999999999999.0.0", (99999999999999999999, 0, 0, (), ())),
    ],
)
def test_parse_reads_every_part_and_str_writes_it_back(
    text: str, fields: tuple[object, ...]
) -> None:
    # Prepare: nothing beyond the text

    # Execute
    version = Version.parse(text)

    # Assert
    assert dataclasses.astuple(version) == fields
    assert str(version) == text


def test_a_leading_v_is_accepted_and_dropped() -> None:
    # Prepare: nothing

    # Execute
    version = Version.parse("v1.2.3-rc.1")

    # Assert
    assert version == Version(1, 2, 3, ("rc", "1"))
    assert str(version) == "1.2.3-rc.1"


@PROPERTY
@given(text=version_texts())
def test_parse_and_str_round_trip(text: str) -> None:
    # Prepare: nothing beyond the text

    # Execute
    version = Version.parse(text)

    # Assert
    assert str(version) == text
    assert dataclasses.astuple(Version.parse(str(version))) == dataclasses.astuple(version)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "1",
        "1.2",
        "1.2.3.4",
        "01.2.3",
        "1.02.3",
        "1.2.03",
        "1.2.3-",
        "1.2.3+",
        "1.2.3-01",
        "1.2.3-alpha.01",
        "1.2.3-a..b",
        "1.2.3+a..b",
        "1.2.3-a_b",
        "1.2.3+a_b",
        "a.b.c",
        "1.2.3 ",
        " 1.2.3",
        "-1.2.3",
        "1.2.-3",
        "1.2.3-\u03b1",
        "v",
        "vv1.2.3",
        "V1.2.3",
        "1.2.3-+",
        "+1.2.3",
    ],
    ids=repr,
)
def test_invalid_strings_raise_value_error(text: str) -> None:
    # Prepare: nothing beyond the text

    # Execute / Assert
    with pytest.raises(ValueError, match="not a semantic version"):
        Version.parse(text)


@pytest.mark.parametrize("text", ["1.2.3\n", "1\u0661.0.0", "1.0.0-\u0661a"], ids=repr)
def test_newline_and_non_ascii_digits_are_invalid(text: str) -> None:
    # Prepare: nothing beyond the text

    # Execute / Assert
    with pytest.raises(ValueError, match="not a semantic version"):
        Version.parse(text)


# --- precedence ---------------------------------------------------------------------------------


@pytest.mark.parametrize("chain", [SPEC_CHAIN, NUMERIC_CHAIN], ids=["prerelease", "numeric"])
def test_spec_examples_are_strictly_increasing(chain: list[str]) -> None:
    # Prepare
    versions = [Version.parse(t) for t in chain]

    # Execute
    pairs = list(itertools.pairwise(versions))

    # Assert
    for lower, higher in pairs:
        assert lower < higher
        assert higher > lower
        assert not higher < lower
        assert lower != higher
        assert lower <= higher


@pytest.mark.parametrize("chain", [SPEC_CHAIN, NUMERIC_CHAIN], ids=["prerelease", "numeric"])
def test_sorting_shuffled_spec_examples_restores_them(chain: list[str]) -> None:
    # Prepare
    shuffled = chain[:]
    random.Random(4).shuffle(shuffled)

    # Execute
    ordered = sorted(Version.parse(t) for t in shuffled)

    # Assert
    assert [str(v) for v in ordered] == chain


@pytest.mark.parametrize(
    ("a", "b"),
    [("1.0.0+build.1", "1.0.0+build.2"), ("1.0.0-alpha+001", "1.0.0-alpha"), ("1.0.0+a", "1.0.0")],
)
def test_build_metadata_is_ignored_for_precedence(a: str, b: str) -> None:
    # Prepare
    va, vb = Version.parse(a), Version.parse(b)

    # Execute
    ordered = (va < vb, vb < va)

    # Assert
    assert ordered == (False, False)
    assert va == vb
    assert hash(va) == hash(vb)
    assert len({va, vb}) == 1


def test_numeric_prerelease_identifiers_compare_as_numbers() -> None:
    # Prepare
    low, high = Version.parse("1.0.0-2"), Version.parse("1.0.0-10")

    # Execute / Assert
    assert low < high
    assert Version.parse("1.0.0-999") < Version.parse("1.0.0-a")  # numeric < alphanumeric
    assert Version.parse("1.0.0-B") < Version.parse("1.0.0-a")  # ASCII: uppercase first


@PROPERTY
@given(a=version_texts(), b=version_texts())
def test_precedence_matches_the_spec(a: str, b: str) -> None:
    # Prepare
    va, vb = Version.parse(a), Version.parse(b)

    # Execute
    got = compare(va, vb)

    # Assert
    assert got == reference_compare(a, b)
    assert got == -compare(vb, va)
    assert (va == vb) == (got == 0)


@PROPERTY
@given(a=version_texts(), b=version_texts(), c=version_texts())
def test_precedence_is_transitive(a: str, b: str, c: str) -> None:
    # Prepare
    va, vb, vc = sorted(Version.parse(t) for t in (a, b, c))

    # Execute / Assert
    assert va <= vb <= vc
    assert va <= vc


def test_comparing_with_a_string_is_a_type_error() -> None:
    # Prepare
    version = Version(1, 0, 0)

    # Execute / Assert
    with pytest.raises(TypeError):
        _ = version < "2.0.0"  # type: ignore[operator]


# --- next_minor ---------------------------------------------------------------------------------


@PROPERTY
@given(text=version_texts())
def test_next_minor_always_sorts_after_its_input(text: str) -> None:
    # Prepare
    version = Version.parse(text)

    # Execute
    nxt = version.next_minor()

    # Assert
    assert version < nxt
    assert nxt.prerelease == ()
    assert nxt.build == ()
    assert (nxt.major, nxt.minor) in {
        (version.major, version.minor),
        (version.major, version.minor + 1),
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0.0.0", "0.1.0"),
        ("1.2.3", "1.3.0"),
        ("1.9.7+b", "1.10.0"),
        ("2.0.0-rc.1", "2.0.0"),
        ("1.3.0-alpha", "1.3.0"),
    ],
)
def test_next_minor_examples(text: str, expected: str) -> None:
    # Prepare
    version = Version.parse(text)

    # Execute
    nxt = version.next_minor()

    # Assert
    assert str(nxt) == expected
