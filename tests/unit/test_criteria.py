"""Recipient criteria: validation with field paths, matching semantics, properties."""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.criteria import OPS, ContactView, Criteria, parse_criteria
from core.errors import InvalidCriteria


def contact(**attributes: object) -> ContactView:
    return ContactView(email="ada@uni.example", name="Ada", attributes=dict(attributes))


def leaf(field: str, op: str, value: object) -> dict:
    return {"field": field, "op": op, "value": value}


def matches(raw: object, who: ContactView) -> bool:
    return parse_criteria(raw).matches(who)


def problems(raw: object) -> dict[str, str]:
    with pytest.raises(InvalidCriteria) as caught:
        parse_criteria(raw)
    return {p.field: p.message for p in caught.value.problems}


def nested_not(depth: int) -> dict:
    """A leaf wrapped so that the path from the root holds ``depth`` nodes."""
    node: dict = leaf("name", "eq", "Ada")
    for _ in range(depth - 1):
        node = {"not": node}
    return node


# --- selection semantics -------------------------------------------------------------


@pytest.mark.parametrize("raw", [None, {}])
def test_empty_criteria_select_every_active_contact(raw: object) -> None:
    criteria = parse_criteria(raw)
    assert criteria.selects_everyone
    assert criteria.matches(contact())


def test_inactive_contact_never_matches_even_empty_criteria() -> None:
    unsubscribed = dataclasses.replace(contact(), state="unsubscribed")
    assert not parse_criteria({}).matches(unsubscribed)
    assert not matches({"not": leaf("name", "eq", "Nobody")}, unsubscribed)


def test_eq_matches_an_equal_attribute() -> None:
    assert matches(leaf("attributes.term", "eq", "Spring 2024"), contact(term="Spring 2024"))
    assert not matches(leaf("attributes.term", "eq", "Fall 2024"), contact(term="Spring 2024"))


@pytest.mark.parametrize(("stored", "wanted"), [(1, "1"), ("1", 1), (True, 1), (1, True)])
def test_eq_never_mixes_kinds(stored: object, wanted: object) -> None:
    assert not matches(leaf("attributes.x", "eq", wanted), contact(x=stored))


def test_eq_compares_int_and_float_as_numbers() -> None:
    assert matches(leaf("attributes.x", "eq", 2), contact(x=2.0))


def test_ne_is_true_for_a_different_value() -> None:
    assert matches(leaf("attributes.x", "ne", "b"), contact(x="a"))
    assert not matches(leaf("attributes.x", "ne", "a"), contact(x="a"))


@pytest.mark.parametrize(
    ("op", "value", "expected"),
    [
        ("eq", "a", False),
        ("ne", "a", True),
        ("in", ["a"], False),
        ("nin", ["a"], True),
        ("gt", 1, False),
        ("gte", 1, False),
        ("lt", 1, False),
        ("lte", 1, False),
        ("contains", "a", False),
        ("starts_with", "", False),
        ("exists", True, False),
        ("exists", False, True),
    ],
)
def test_missing_attribute_matches_only_ne_nin_and_exists_false(
    op: str, value: object, expected: bool
) -> None:
    assert matches(leaf("attributes.absent", op, value), contact()) is expected


def test_none_attribute_counts_as_missing() -> None:
    assert matches(leaf("attributes.x", "exists", False), contact(x=None))


def test_exists_true_matches_a_present_attribute() -> None:
    assert matches(leaf("attributes.x", "exists", True), contact(x=""))


def test_email_comparison_is_case_insensitive() -> None:
    who = ContactView(email="Ada@Uni.Example", name="Ada")
    assert matches(leaf("email", "eq", "ADA@uni.example"), who)
    assert matches(leaf("email", "in", ["ada@UNI.example"]), who)
    assert matches(leaf("email", "starts_with", "ADA@"), who)
    assert matches(leaf("email", "contains", "UNI"), who)
    assert not matches(leaf("email", "ne", "ada@UNI.EXAMPLE"), who)


def test_name_comparison_is_case_sensitive() -> None:
    assert not matches(leaf("name", "eq", "ada"), contact())
    assert matches(leaf("name", "eq", "Ada"), contact())


def test_attribute_comparison_is_case_sensitive() -> None:
    assert not matches(leaf("attributes.x", "eq", "abc"), contact(x="ABC"))


def test_empty_name_counts_as_missing() -> None:
    nameless = ContactView(email="x@uni.example", name="")
    assert matches(leaf("name", "exists", False), nameless)
    assert not matches(leaf("name", "eq", ""), nameless)


def test_in_matches_any_listed_value() -> None:
    assert matches(leaf("attributes.x", "in", ["a", "b"]), contact(x="b"))
    assert not matches(leaf("attributes.x", "in", ["a", "b"]), contact(x="c"))


def test_in_on_list_attribute_matches_when_any_element_is_listed() -> None:
    assert matches(leaf("attributes.c", "in", ["X", "B"]), contact(c=["A", "B"]))
    assert not matches(leaf("attributes.c", "in", ["X"]), contact(c=["A", "B"]))


def test_in_never_mixes_kinds() -> None:
    assert not matches(leaf("attributes.x", "in", [1, "2"]), contact(x=True))
    assert not matches(leaf("attributes.x", "in", [1]), contact(x="1"))


def test_nin_excludes_listed_values() -> None:
    assert not matches(leaf("attributes.x", "nin", ["a", "b"]), contact(x="a"))
    assert matches(leaf("attributes.x", "nin", ["a", "b"]), contact(x="c"))


def test_contains_on_list_attribute_is_membership() -> None:
    who = contact(courses=["CSE456", "CSE100"])
    assert matches(leaf("attributes.courses", "contains", "CSE456"), who)
    assert not matches(leaf("attributes.courses", "contains", "CSE45"), who)


def test_contains_on_string_is_substring() -> None:
    assert matches(leaf("attributes.dept", "contains", "Comp"), contact(dept="Computing"))


def test_contains_number_in_string_is_false() -> None:
    assert not matches(leaf("attributes.x", "contains", 4), contact(x="456"))


def test_starts_with_matches_a_prefix() -> None:
    assert matches(leaf("attributes.x", "starts_with", "CSE"), contact(x="CSE456"))
    assert not matches(leaf("attributes.x", "starts_with", "cse"), contact(x="CSE456"))


@pytest.mark.parametrize(("op", "expected"), [("gt", False), ("gte", True), ("lt", False), ("lte", True)])
def test_ordered_ops_compare_numbers(op: str, expected: bool) -> None:
    assert matches(leaf("attributes.year", op, 3), contact(year=3)) is expected


def test_iso_dates_compare_as_strings() -> None:
    who = contact(enrolled="2024-03-01")
    assert matches(leaf("attributes.enrolled", "gt", "2024-01-31"), who)
    assert not matches(leaf("attributes.enrolled", "lt", "2024-01-31"), who)


@pytest.mark.parametrize("stored", ["5", True, ["5"], {"a": 1}])
def test_ordered_type_mismatch_is_false(stored: object) -> None:
    assert not matches(leaf("attributes.x", "gt", 1), contact(x=stored))


def test_list_is_membership_of_contact_lists() -> None:
    who = ContactView(email="x@uni.example", name="X", lists=["alumni"])
    assert matches({"list": "alumni"}, who)
    assert not matches({"list": "staff"}, who)


def test_all_requires_every_condition() -> None:
    raw = {"all": [leaf("attributes.a", "eq", 1), leaf("attributes.b", "eq", 2)]}
    assert matches(raw, contact(a=1, b=2))
    assert not matches(raw, contact(a=1, b=3))


def test_any_requires_one_condition() -> None:
    raw = {"any": [leaf("attributes.a", "eq", 1), leaf("attributes.b", "eq", 2)]}
    assert matches(raw, contact(a=0, b=2))
    assert not matches(raw, contact(a=0, b=0))


def test_not_inverts_its_condition() -> None:
    assert matches({"not": leaf("attributes.a", "eq", 1)}, contact(a=2))


def test_api_example_selects_the_course_cohort() -> None:
    raw = {
        "all": [
            leaf("attributes.term", "eq", "Spring 2024"),
            leaf("attributes.courses", "contains", "CSE456"),
        ]
    }
    assert matches(raw, contact(term="Spring 2024", courses=["CSE456"]))
    assert not matches(raw, contact(term="Spring 2024", courses=["CSE100"]))


def test_matches_accepts_a_mapping() -> None:
    stored = {"email": "a@b.example", "name": "A", "attributes": {"x": 1}, "state": "active"}
    assert parse_criteria(leaf("attributes.x", "eq", 1)).matches(stored)


def test_attribute_key_may_contain_dots() -> None:
    assert matches(leaf("attributes.a.b", "eq", 1), contact(**{"a.b": 1}))


# --- validation and field paths --------------------------------------------------------


def test_unknown_op_is_reported_with_its_path() -> None:
    found = problems({"all": [leaf("name", "eq", "A"), leaf("name", "like", "A")]})
    assert list(found) == ["criteria.all.1.op"]


def test_bad_value_is_reported_with_its_path() -> None:
    assert "criteria.any.1.value" in problems(
        {"any": [leaf("name", "eq", "A"), leaf("name", "exists", "yes")]}
    )


def test_bad_in_item_is_reported_with_its_index() -> None:
    assert "criteria.value.2" in problems(leaf("name", "in", ["a", "b", None]))


def test_problem_under_not_is_reported_with_its_path() -> None:
    assert "criteria.not.field" in problems({"not": leaf("phone", "eq", "1")})


def test_custom_path_prefix_is_used() -> None:
    with pytest.raises(InvalidCriteria) as caught:
        parse_criteria({"not": {}}, path="body.criteria")
    assert {p.field for p in caught.value.problems} == {
        "body.criteria.not.field",
        "body.criteria.not.op",
        "body.criteria.not.value",
    }


def test_problems_in_several_nodes_are_all_reported() -> None:
    found = problems({"all": [leaf("phone", "eq", 1), leaf("name", "gt", [1]), {"list": 3}]})
    assert set(found) == {"criteria.all.0.field", "criteria.all.1.value", "criteria.all.2.list"}


@pytest.mark.parametrize("field", ["phone", "attributes.", "attributes.a b", "attributes." + "k" * 65])
def test_unknown_field_is_rejected(field: str) -> None:
    assert "criteria.field" in problems(leaf(field, "eq", 1))


def test_unknown_key_in_leaf_is_reported() -> None:
    assert "criteria.case" in problems({**leaf("name", "eq", "A"), "case": "insensitive"})


@pytest.mark.parametrize("missing", ["field", "op", "value"])
def test_missing_leaf_key_is_reported(missing: str) -> None:
    raw = leaf("name", "exists", True)
    del raw[missing]
    assert f"criteria.{missing}" in problems(raw)


def test_exists_requires_true_or_false() -> None:
    assert "criteria.value" in problems(leaf("name", "exists", 1))


@pytest.mark.parametrize("value", ["soon", "2024-13-01", True, None, [1]])
def test_ordered_ops_need_a_number_or_iso_string(value: object) -> None:
    assert "criteria.value" in problems(leaf("attributes.x", "gt", value))


@pytest.mark.parametrize("value", ["2024-03-01", "2024-03-01T09:00:00Z", "2024-03-01T09:00+02:00", 1.5])
def test_ordered_ops_accept_numbers_and_iso_strings(value: object) -> None:
    parse_criteria(leaf("attributes.x", "lte", value))


def test_starts_with_requires_a_string() -> None:
    assert "criteria.value" in problems(leaf("name", "starts_with", 1))


@pytest.mark.parametrize("value", [None, [1], {"a": 1}, math.nan, math.inf])
def test_contains_requires_a_finite_scalar(value: object) -> None:
    assert "criteria.value" in problems(leaf("attributes.x", "contains", value))


@pytest.mark.parametrize("value", [[], "a", None])
def test_in_requires_a_non_empty_list(value: object) -> None:
    assert "criteria.value" in problems(leaf("name", "in", value))


def test_in_with_more_than_1000_values_is_rejected() -> None:
    assert "criteria.value" in problems(leaf("name", "nin", [str(i) for i in range(1001)]))


def test_in_with_1000_values_is_accepted() -> None:
    parse_criteria(leaf("name", "in", [str(i) for i in range(1000)]))


@pytest.mark.parametrize("key", ["all", "any"])
def test_empty_group_is_rejected(key: str) -> None:
    assert f"criteria.{key}" in problems({key: []})


def test_two_group_keys_in_one_node_are_rejected() -> None:
    assert "criteria" in problems({"all": [leaf("name", "eq", "A")], "not": {}})


def test_extra_key_beside_a_group_is_reported() -> None:
    assert "criteria.field" in problems({"list": "a", "field": "name"})


def test_empty_list_name_is_rejected() -> None:
    assert "criteria.list" in problems({"list": ""})


@pytest.mark.parametrize("raw", [[], "name = 'Ada'", 3])
def test_non_object_criteria_are_rejected(raw: object) -> None:
    assert "criteria" in problems(raw)


def test_nested_empty_object_is_rejected() -> None:
    assert "criteria.all.0.field" in problems({"all": [{}]})


def test_depth_of_eight_is_accepted() -> None:
    parse_criteria(nested_not(8))


def test_depth_over_eight_is_rejected() -> None:
    assert "criteria" + ".not" * 8 in problems(nested_not(9))


def test_one_hundred_leaves_are_accepted() -> None:
    parse_criteria({"any": [leaf("name", "eq", str(i)) for i in range(100)]})


def test_more_than_one_hundred_leaves_are_rejected() -> None:
    half = {"any": [leaf("name", "eq", str(i)) for i in range(51)]}
    assert "criteria" in problems({"all": [half, half]})


# --- the parsed object ------------------------------------------------------------------


def test_to_dict_is_the_normalized_form() -> None:
    raw = {"any": [{"list": "a"}, leaf("email", "in", ["A@X.example"])]}
    assert parse_criteria(raw).to_dict() == {
        "any": [{"list": "a"}, {"field": "email", "op": "in", "value": ["a@x.example"]}]
    }


def test_empty_criteria_serialize_to_an_empty_object() -> None:
    assert parse_criteria(None).to_dict() == {}


def test_criteria_are_immutable() -> None:
    criteria = parse_criteria({"list": "a"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        criteria._canonical = "{}"  # type: ignore[misc]


def test_later_changes_to_the_input_do_not_affect_parsed_criteria() -> None:
    raw = leaf("attributes.x", "in", ["a"])
    criteria = parse_criteria(raw)
    raw["value"].append("b")
    assert not criteria.matches(contact(x="b"))
    assert criteria.to_dict()["value"] == ["a"]


def test_to_dict_returns_a_fresh_copy() -> None:
    criteria = parse_criteria({"list": "a"})
    criteria.to_dict()["list"] = "b"
    assert criteria.to_dict() == {"list": "a"}


# --- properties ---------------------------------------------------------------------------

FIELDS = ["email", "name", "attributes.a", "attributes.b"]
scalars = st.one_of(
    st.text(max_size=5),
    st.integers(-5, 5),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.booleans(),
)
iso_dates = st.dates().map(lambda d: d.isoformat())


@st.composite
def leaves(draw: st.DrawFn) -> dict:
    op = draw(st.sampled_from(OPS))
    if op == "exists":
        value = draw(st.booleans())
    elif op in ("in", "nin"):
        value = draw(st.lists(scalars, min_size=1, max_size=4))
    elif op in ("gt", "gte", "lt", "lte"):
        value = draw(st.one_of(st.integers(-5, 5), iso_dates))
    elif op == "starts_with":
        value = draw(st.text(max_size=3))
    else:
        value = draw(scalars)
    return leaf(draw(st.sampled_from(FIELDS)), op, value)


def trees(depth: int) -> st.SearchStrategy[dict]:
    simple = st.one_of(leaves(), st.sampled_from(["x", "y"]).map(lambda n: {"list": n}))
    if depth == 1:
        return simple
    inner = trees(depth - 1)
    return st.one_of(
        simple,
        st.builds(lambda c: {"not": c}, inner),
        st.lists(inner, min_size=1, max_size=3).map(lambda cs: {"all": cs}),
        st.lists(inner, min_size=1, max_size=3).map(lambda cs: {"any": cs}),
    )


anything = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(),
        st.text(max_size=5),
        st.binary(max_size=3),
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=2), inner)),
    max_leaves=6,
)


@st.composite
def contacts(draw: st.DrawFn, values: st.SearchStrategy = scalars) -> ContactView:
    return ContactView(
        email=draw(st.sampled_from(["a@x.example", "B@X.example", ""])),
        name=draw(st.text(max_size=4)),
        attributes=draw(st.dictionaries(st.sampled_from(["a", "b"]), values, max_size=2)),
        lists=draw(st.lists(st.sampled_from(["x", "y"]), max_size=2)),
    )


@settings(max_examples=300)
@given(tree=trees(4), who=contacts(st.one_of(scalars, st.lists(st.text(max_size=3)))))
def test_not_inverts_matches_for_any_active_contact(tree: dict, who: ContactView) -> None:
    assert parse_criteria({"not": tree}).matches(who) is not parse_criteria(tree).matches(who)


@settings(max_examples=300)
@given(tree=trees(4))
def test_to_dict_round_trips(tree: dict) -> None:
    criteria = parse_criteria(tree)
    again = parse_criteria(criteria.to_dict())
    assert again == criteria
    assert again.to_dict() == criteria.to_dict()


@settings(max_examples=300)
@given(tree=trees(3), who=contacts(anything))
def test_evaluation_never_raises_for_arbitrary_attribute_values(tree: dict, who: ContactView) -> None:
    assert parse_criteria(tree).matches(who) in (True, False)


@given(raw=anything)
def test_parsing_arbitrary_input_raises_only_invalid_criteria(raw: object) -> None:
    try:
        result = parse_criteria(raw)
    except InvalidCriteria as error:
        assert error.problems
    else:
        assert isinstance(result, Criteria)
