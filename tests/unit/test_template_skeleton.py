"""One body for many recipients: the skeleton plus substitutions is the per-recipient render, exactly."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import RenderError
from core.templates import (
    MAX_SUBSTITUTION_BYTES,
    TemplateSpec,
    build_context,
    compile_template,
    render_skeleton,
    substitutable,
    substitutions_for,
)
from devhost.sendgrid_sim import substitute
from task_manager.batch_send import substitution_bytes, too_large_to_batch

VALUES = [
    "{{ contact.name }}", "{{contact.email}}", "{{ contact.attributes.plan }}",
    "{{ contact.attributes['n'] }}", "{{ unsubscribe_url }}", "{{ campaign.name }}", "{{- contact.name -}}",
    "{{ contact.attributes.missing }}", "{{ contact.attributes.plan.deeper }}",
]
LOGIC = [
    "{% if contact.name %}dear {{ contact.name }}{% endif %}", "{{ contact.name|upper }}",
    "{% for c in contact.attributes.courses %}{{ c }}{% endfor %}", "{{ contact.attributes.n + 1 }}",
    "{% set x = contact.name %}{{ x }}", "{{ contact.name if contact.name else 'friend' }}",
]
LITERAL = st.text(
    st.characters(blacklist_categories=("Cs",)), max_size=20
).filter(lambda s: not any(token in s for token in ("{{", "{%", "{#", "}}", "%}", "#}", "{")))
DATA = st.text(st.characters(blacklist_categories=("Cs",)), max_size=15)
SUBJECTS = st.sampled_from(["Hi {{ contact.name }}", "News", "{% if contact.name %}x{% endif %} y"])
ATTRIBUTE = st.one_of(DATA, st.integers(), st.none(), st.lists(DATA, max_size=2), st.booleans())


def part(pieces: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.lists(st.one_of(LITERAL, pieces), max_size=8).map("".join)


@st.composite
def template(draw: st.DrawFn, logic: bool) -> TemplateSpec:
    pieces = st.sampled_from(VALUES + LOGIC) if logic else st.sampled_from(VALUES)
    html, text = draw(part(pieces)), draw(part(pieces))
    return TemplateSpec(
        subject=draw(SUBJECTS),
        html=html if html.strip() or text.strip() else "<p>x</p>",
        text=text,
        from_email="news@example.org",
    )


@st.composite
def context(draw: st.DrawFn) -> dict:
    contact = {
        "email": draw(st.sampled_from(["ada@example.com", "o'brien&co@example.com"])),
        "name": draw(st.one_of(DATA, st.sampled_from(["<b>Zoë</b> & \"co\"", "  padded  ", "-mr0-"]))),
        "attributes": draw(st.dictionaries(st.sampled_from(["plan", "n", "other"]), ATTRIBUTE, max_size=3)),
    }
    url = draw(st.sampled_from(["https://m.example/u/tok?a=1&b=<2>", "https://m.example/u/x"]))
    return build_context(contact, draw(st.sampled_from(["Spring <2024> & co", "News"])), url)


def render_both(spec: TemplateSpec, ctx: dict) -> tuple[object, object]:
    """(per-recipient render, skeleton + substitutions), each as parts or RenderError."""
    try:
        rendered = compile_template(spec).render(ctx)
        whole: object = (rendered.subject, rendered.html, rendered.text)
    except RenderError:
        whole = RenderError
    skeleton = render_skeleton(spec, ctx["campaign"]["name"])
    try:
        message, values = skeleton.message_for(ctx)
        html, text = substitute(message.html, values), substitute(message.text, values)
        batched: object = (message.subject, html, text)
    except RenderError:
        batched = RenderError
    return whole, batched


@settings(max_examples=400, deadline=None)
@given(spec=template(logic=False), ctx=context())
def test_substituting_a_recipients_values_into_the_skeleton_is_byte_identical_to_rendering_for_them(
    spec: TemplateSpec, ctx: dict
) -> None:
    assert substitutable(spec)
    whole, batched = render_both(spec, ctx)

    assert batched == whole


@settings(max_examples=200, deadline=None)
@given(spec=template(logic=True), ctx=context())
def test_a_template_is_substitutable_exactly_when_its_bodies_use_recipient_data_only_as_values(
    spec: TemplateSpec, ctx: dict
) -> None:
    has_logic = any(piece in spec.html or piece in spec.text for piece in LOGIC)

    assert substitutable(spec) is not has_logic
    if not has_logic:
        whole, batched = render_both(spec, ctx)
        assert batched == whole


def test_html_values_are_escaped_and_text_values_are_not() -> None:
    spec = TemplateSpec(subject="Hi", html="<p>{{ contact.name }}</p>", text="{{ contact.name }}",
                        from_email="news@example.org")
    skeleton = render_skeleton(spec, "News")

    values = substitutions_for(skeleton, build_context({"name": "A & <B>"}, "News", "https://u"))

    assert substitute(skeleton.html, values) == "<p>A &amp; &lt;B&gt;</p>"
    assert substitute(skeleton.text, values) == "A & <B>"


def test_a_template_with_logic_has_no_skeleton() -> None:
    spec = TemplateSpec(subject="Hi", html="{% if contact.name %}x{% endif %}", from_email="news@example.org")

    with pytest.raises(ValueError):
        render_skeleton(spec, "News")


def test_a_recipient_value_holding_the_values_separator_still_gets_its_exact_values() -> None:
    spec = TemplateSpec(subject="Hi", html="<p>{{ contact.name }}</p>", text="{{ contact.attributes.plan }}",
                        from_email="news@example.org")
    skeleton = render_skeleton(spec, "News")
    tricky = f"a{skeleton.separator}b"  # as if a recipient had guessed the job's nonce
    ctx = build_context({"name": tricky, "attributes": {"plan": "<gold>"}}, "News", "https://u")

    values = substitutions_for(skeleton, ctx)

    assert substitute(skeleton.html, values) == compile_template(spec).render(ctx).html
    assert substitute(skeleton.text, values) == "<gold>"


def test_all_of_a_recipients_values_render_in_one_pass() -> None:
    spec = TemplateSpec(subject="Hi", html="<p>{{ contact.name }} {{ unsubscribe_url }}</p>",
                        text="{{ contact.name }}", from_email="news@example.org")
    skeleton = render_skeleton(spec, "News")
    ctx = build_context({"name": "A & B"}, "News", "https://u?a=1&b=2")
    renders: list[object] = []
    assert skeleton.together is not None
    original = skeleton.together.render
    object.__setattr__(skeleton.together, "render", lambda c: renders.append(c) or original(c))
    for template in skeleton.values.values():
        object.__setattr__(template, "render", lambda c: pytest.fail("a value was rendered alone"))

    values = substitutions_for(skeleton, ctx)

    assert len(renders) == 1
    assert sorted(values.values()) == ["A & B", "A &amp; B", "https://u?a=1&amp;b=2"]


@settings(max_examples=300, deadline=None)
@given(values=st.dictionaries(
    st.sampled_from(["-mr0-n-", "-mr1-n-", "-mr2-n-"]),
    st.one_of(st.text(max_size=40),
              st.text(st.sampled_from("a\x00é\u2028\"\\"), min_size=1600, max_size=2600)),
))
def test_a_recipient_goes_alone_exactly_when_its_values_pass_sendgrids_personalization_limit(
    values: dict[str, str],
) -> None:
    assert too_large_to_batch(values) is (substitution_bytes(values) > MAX_SUBSTITUTION_BYTES)
