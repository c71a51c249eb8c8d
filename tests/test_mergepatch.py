"""JSON Merge Patch (RFC 7386) as the entities projection applies it, and diffs between states."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from projections.mergepatch import changes, diff, merge_patch

scalars = st.one_of(st.booleans(), st.integers(-5, 5), st.text(max_size=3))
keys = st.sampled_from(["a", "b", "c", "d"])
values: st.SearchStrategy[Any] = st.recursive(
    scalars | st.lists(scalars, max_size=2),
    lambda inner: st.dictionaries(keys, inner, max_size=3),
    max_leaves=8,
)
documents = st.dictionaries(keys, values, max_size=4)
patches: st.SearchStrategy[Any] = st.recursive(
    st.none() | scalars,
    lambda inner: st.dictionaries(keys, inner, max_size=3),
    max_leaves=8,
)


def test_rfc7386_appendix_a_examples() -> None:
    """Every example of RFC 7386 appendix A gives the RFC's result."""
    cases = [
        ({"a": "b"}, {"a": "c"}, {"a": "c"}),
        ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
        ({"a": "b"}, {"a": None}, {}),
        ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
        ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
        ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
        ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
        ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
        (["a", "b"], ["c", "d"], ["c", "d"]),
        ({"a": "b"}, ["c"], ["c"]),
        ({"a": "foo"}, None, None),
        ({"a": "foo"}, "bar", "bar"),
        ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
        ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
        ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
    ]
    for target, patch, expected in cases:
        assert merge_patch(target, patch) == expected, (target, patch)


@given(documents, patches)
def test_patching_never_mutates_its_inputs(doc: dict[str, Any], patch: Any) -> None:
    """A patch returns a new document and leaves the target and the patch as they were."""
    before_doc, before_patch = copy.deepcopy(doc), copy.deepcopy(patch)
    merge_patch(doc, patch)
    assert doc == before_doc and patch == before_patch


@given(documents, patches)
def test_patching_is_idempotent(doc: dict[str, Any], patch: Any) -> None:
    """Applying the same merge patch twice changes nothing the second time (RFC 7386)."""
    once = merge_patch(doc, patch)
    assert merge_patch(once, patch) == once


@given(documents, documents)
def test_diff_is_the_patch_between_two_states(a: dict[str, Any], b: dict[str, Any]) -> None:
    """``merge_patch(a, diff(a, b)) == b`` for documents without nulls."""
    assert merge_patch(a, diff(a, b)) == b


def test_changes_name_each_path() -> None:
    """``changes`` lists additions, removals and replacements by path, sorted."""
    out = changes({"a": 1, "b": {"c": 2, "d": 3}}, {"b": {"c": 5, "e": 1}, "f": True})
    assert [(c.path, c.op, c.old, c.new) for c in out] == [
        (["a"], "remove", 1, None),
        (["b", "c"], "replace", 2, 5),
        (["b", "d"], "remove", 3, None),
        (["b", "e"], "add", None, 1),
        (["f"], "add", None, True),
    ]
    assert changes({"x": 1}, {"x": 1}) == []
    assert [c.op for c in changes({"x": 1}, {"x": True})] == ["replace"]
