"""Recipient criteria: validate once at save time, compile once, evaluate per contact.

The Job Manager runs a campaign's criteria over up to a million contacts, so
``parse_criteria`` turns the JSON tree (API.md, "Campaigns and jobs") into nested
closures; ``Criteria.matches`` then costs a few function calls per condition and never
re-reads the dicts. Every problem found while parsing is reported with its dotted path in
the request (``criteria.all.0.op``) so the API can answer 422 with all of them at once.

Semantics worth knowing:

* a contact whose ``state`` is not ``"active"`` never matches, even empty criteria;
* a missing attribute (absent or ``None``) and an empty ``name`` are "missing": only
  ``ne``, ``nin`` and ``exists: false`` match them;
* values compare only with values of the same kind (string, number, boolean): ``1`` never
  equals ``"1"`` or ``true``, and a mismatch is simply false;
* ``email`` compares case-insensitively (criteria values are stored lower-cased);
* on a list attribute ``contains`` is membership and ``in``/``nin`` test whether any
  element is (is not) in the given values.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from core.errors import FieldProblem, InvalidCriteria

MAX_DEPTH = 8
MAX_LEAVES = 100
MAX_IN_VALUES = 1000
MAX_PROBLEMS = 100

OPS = (
    "eq",
    "ne",
    "in",
    "nin",
    "gt",
    "gte",
    "lt",
    "lte",
    "contains",
    "exists",
    "starts_with",
)
_GROUP_KEYS = ("all", "any", "not", "list")
_LEAF_KEYS = ("field", "op", "value")
_ATTRIBUTE_KEY = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:\d{2})?)?")

Scalar = str | int | float | bool
Predicate = Callable[[Any], bool]


@dataclass(slots=True)
class ContactView:
    """The parts of a contact that criteria and templates read; storage-agnostic."""

    email: str
    name: str
    attributes: dict[str, Any] = field(default_factory=dict)
    lists: list[str] = field(default_factory=list)
    state: str = "active"

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> ContactView:
        """Accept a stored contact dict so callers need not convert by hand."""
        return cls(
            email=data.get("email") or "",
            name=data.get("name") or "",
            attributes=data.get("attributes") or {},
            lists=data.get("lists") or [],
            state=data.get("state") or "active",
        )


@dataclass(frozen=True, slots=True)
class Criteria:
    """A validated, compiled, immutable recipient filter. Build it with ``parse_criteria``."""

    _canonical: str
    _predicate: Predicate | None = field(compare=False, repr=False)

    @property
    def selects_everyone(self) -> bool:
        """True for empty criteria, so a caller can skip evaluation altogether."""
        return self._predicate is None

    def matches(self, contact: ContactView | Mapping[str, Any]) -> bool:
        """Whether an active contact is selected; never raises for odd attribute values."""
        if isinstance(contact, Mapping):
            contact = ContactView.from_mapping(contact)
        if contact.state != "active":
            return False
        return self._predicate is None or self._predicate(contact)

    def to_dict(self) -> dict[str, Any]:
        """The normalized JSON form to store; ``parse_criteria`` reads it back unchanged."""
        return json.loads(self._canonical)


def parse_criteria(raw: object, path: str = "criteria") -> Criteria:
    """Validate and compile criteria; raise InvalidCriteria listing every problem found."""
    if raw is None or (isinstance(raw, dict) and not raw):
        return Criteria("{}", None)
    parser = _Parser()
    result = parser.node(raw, path, 1)
    if parser.leaves > MAX_LEAVES:
        parser.problem(path, f"at most {MAX_LEAVES} conditions are allowed")
    if parser.problems or result is None:
        raise InvalidCriteria("invalid criteria", parser.problems[:MAX_PROBLEMS])
    normalized, predicate = result
    return Criteria(json.dumps(normalized, sort_keys=True, ensure_ascii=False), predicate)


class _Parser:
    """Walks the raw tree once, collecting problems and building (normal form, closure)."""

    def __init__(self) -> None:
        self.problems: list[FieldProblem] = []
        self.leaves = 0

    def problem(self, path: str, message: str) -> None:
        self.problems.append(FieldProblem(path, message))

    def node(self, raw: object, path: str, depth: int) -> tuple[dict, Predicate] | None:
        if self.leaves > MAX_LEAVES or len(self.problems) >= MAX_PROBLEMS:
            return None  # already invalid: stop walking a huge tree
        if not isinstance(raw, dict):
            self.problem(path, "must be an object")
            return None
        if depth > MAX_DEPTH:
            self.problem(path, f"criteria may nest at most {MAX_DEPTH} levels deep")
            return None
        groups = [key for key in _GROUP_KEYS if key in raw]
        if len(groups) > 1:
            self.problem(path, "a node has exactly one of all, any, not, list")
            return None
        if not groups:
            return self.leaf(raw, path)
        key = groups[0]
        for extra in raw:
            if extra != key:
                self.problem(f"{path}.{extra}", f"unexpected key beside '{key}'")
        value, sub = raw[key], f"{path}.{key}"
        if key == "list":
            self.leaves += 1
            if not isinstance(value, str) or not value:
                self.problem(sub, "must be a non-empty list name")
                return None
            return {"list": value}, _list_member(value)
        if key == "not":
            child = self.node(value, sub, depth + 1)
            return None if child is None else ({"not": child[0]}, _negate(child[1]))
        if not isinstance(value, list) or not value:
            self.problem(sub, "must be a non-empty array of criteria")
            return None
        if len(value) > MAX_LEAVES:
            self.problem(sub, f"at most {MAX_LEAVES} conditions are allowed")
            return None
        found = [self.node(item, f"{sub}.{i}", depth + 1) for i, item in enumerate(value)]
        children = [child for child in found if child is not None]
        if len(children) < len(found):
            return None
        predicates = [child[1] for child in children]
        combine = _all_of if key == "all" else _any_of
        return {key: [child[0] for child in children]}, combine(predicates)

    def leaf(self, raw: dict, path: str) -> tuple[dict, Predicate] | None:
        self.leaves += 1
        ok = True
        for extra in raw:
            if extra not in _LEAF_KEYS:
                self.problem(f"{path}.{extra}", "unknown key")
                ok = False
        for required in _LEAF_KEYS:
            if required not in raw:
                self.problem(f"{path}.{required}", "is required")
                ok = False
        name, op = raw.get("field"), raw.get("op")
        if "field" in raw and not _valid_field(name):
            self.problem(f"{path}.field", "must be email, name or attributes.<key>")
            ok = False
        if "op" in raw and op not in OPS:
            self.problem(f"{path}.op", f"unknown op; expected one of {', '.join(OPS)}")
            ok = False
        elif op in OPS and "value" in raw and (found := _value_problem(op, raw["value"])):
            suffix, message = found
            self.problem(f"{path}.value{suffix}", message)
            ok = False
        if not ok or not isinstance(name, str) or not isinstance(op, str):  # both checked above
            return None
        value = raw["value"]
        if name == "email":
            value = _lower(value)
        return {"field": name, "op": op, "value": value}, _compile_leaf(name, op, value)


def _valid_field(name: object) -> bool:
    if name in ("email", "name"):
        return True
    return (
        isinstance(name, str)
        and name.startswith("attributes.")
        and _ATTRIBUTE_KEY.fullmatch(name[len("attributes.") :]) is not None
    )


def _is_scalar(value: object) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, (str, int, bool))


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and _is_scalar(value)


def _is_iso(value: str) -> bool:
    if not _ISO_DATE.fullmatch(value):
        return False
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


def _value_problem(op: str, value: object) -> tuple[str, str] | None:
    """``(path suffix, message)`` for a value the op cannot use, or None when it fits."""
    if op == "exists":
        return None if isinstance(value, bool) else ("", "must be true or false")
    if op in ("in", "nin"):
        if not isinstance(value, list) or not value:
            return "", "must be a non-empty array"
        if len(value) > MAX_IN_VALUES:
            return "", f"at most {MAX_IN_VALUES} values are allowed"
        for i, item in enumerate(value):
            if not _is_scalar(item):
                return f".{i}", "must be a string, number or boolean"
        return None
    if op in ("gt", "gte", "lt", "lte"):
        if _is_number(value) or (isinstance(value, str) and _is_iso(value)):
            return None
        return "", "must be a number or an ISO-8601 date string"
    if op == "starts_with":
        return None if isinstance(value, str) else ("", "must be a string")
    return None if _is_scalar(value) else ("", "must be a string, number or boolean")


def _lower(value: Any) -> Any:
    if isinstance(value, str):
        return value.lower()
    if isinstance(value, list):
        return [_lower(item) for item in value]
    return value


# --- compilation: every function below runs once per parse and returns a closure ---------


def _getter(name: str) -> Callable[[Any], Any]:
    """Read a field from a contact; ``None`` means missing."""
    if name == "email":

        def get(contact: Any) -> Any:
            email = contact.email
            return email.lower() if isinstance(email, str) else None

    elif name == "name":

        def get(contact: Any) -> Any:
            value = contact.name
            return value if isinstance(value, str) and value else None

    else:
        key = name[len("attributes.") :]

        def get(contact: Any) -> Any:
            attributes = contact.attributes
            return attributes.get(key) if attributes else None

    return get


def _same_kind_equal(expected: Scalar) -> Callable[[Any], bool]:
    """Equality that never mixes kinds (``True`` is not ``1``, ``1`` is not ``"1"``)."""
    if isinstance(expected, bool):
        return lambda v: v is expected
    if isinstance(expected, str):
        return lambda v: isinstance(v, str) and v == expected
    return lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v == expected


def _member_of(values: list[Scalar]) -> Callable[[Any], bool]:
    """``v in values`` by kind; a list attribute matches when any element does."""
    strings = frozenset(v for v in values if isinstance(v, str))
    numbers = frozenset(v for v in values if _is_number(v))
    bools = frozenset(v for v in values if isinstance(v, bool))

    def one(v: Any) -> bool:
        if isinstance(v, str):
            return v in strings
        if isinstance(v, bool):
            return v in bools
        if isinstance(v, (int, float)):
            return v in numbers
        return False

    def test(v: Any) -> bool:
        if isinstance(v, list):
            return any(one(item) for item in v)
        return one(v)

    return test


def _ordered(op: str, bound: Scalar) -> Callable[[Any], bool]:
    """gt/gte/lt/lte for numbers against numbers, strings against strings."""
    compare = {
        "gt": lambda v: v > bound,
        "gte": lambda v: v >= bound,
        "lt": lambda v: v < bound,
        "lte": lambda v: v <= bound,
    }[op]
    if isinstance(bound, str):
        return lambda v: isinstance(v, str) and compare(v)
    return lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and compare(v)


def _contains(needle: Scalar) -> Callable[[Any], bool]:
    """Substring on a string, membership on a list; anything else is false."""
    if isinstance(needle, str):
        # A string equals only a string, so plain ``in`` is kind-safe here (and fast).
        return lambda v: isinstance(v, (str, list)) and needle in v
    equal = _same_kind_equal(needle)
    return lambda v: isinstance(v, list) and any(equal(item) for item in v)


def _starts_with(prefix: str) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, str) and v.startswith(prefix)


def _compile_leaf(name: str, op: str, value: Any) -> Predicate:
    get = _getter(name)
    if op == "exists":
        if value:
            return lambda c: get(c) is not None
        return lambda c: get(c) is None
    if op in ("eq", "ne"):
        test = _same_kind_equal(value)
    elif op in ("in", "nin"):
        test = _member_of(value)
    elif op == "contains":
        test = _contains(value)
    elif op == "starts_with":
        test = _starts_with(value)
    else:
        test = _ordered(op, value)
    negate = op in ("ne", "nin")
    if name.startswith("attributes."):
        # The common case, with the lookup inlined: one call fewer per contact.
        key = name[len("attributes.") :]

        def attribute(contact: Any) -> bool:
            attributes = contact.attributes
            v = attributes.get(key) if attributes else None
            return (v is None or not test(v)) if negate else (v is not None and test(v))

        return attribute

    def field_(contact: Any) -> bool:
        v = get(contact)
        return (v is None or not test(v)) if negate else (v is not None and test(v))

    return field_


def _list_member(list_name: str) -> Predicate:
    def member(contact: Any) -> bool:
        lists = contact.lists
        return bool(lists) and list_name in lists

    return member


def _negate(predicate: Predicate) -> Predicate:
    return lambda contact: not predicate(contact)


def _all_of(predicates: list[Predicate]) -> Predicate:
    if len(predicates) == 1:
        return predicates[0]
    frozen = tuple(predicates)

    def every(contact: Any) -> bool:
        for predicate in frozen:
            if not predicate(contact):
                return False
        return True

    return every


def _any_of(predicates: list[Predicate]) -> Predicate:
    if len(predicates) == 1:
        return predicates[0]
    frozen = tuple(predicates)

    def some(contact: Any) -> bool:
        for predicate in frozen:
            if predicate(contact):
                return True
        return False

    return some
