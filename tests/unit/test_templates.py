"""Templates: spec validation, save-time sandbox checks, per-recipient rendering."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from markupsafe import escape
from pydantic import ValidationError

from core.criteria import ContactView
from core.errors import InvalidTemplate, RenderError
from core.templates import (
    CompiledTemplate,
    RenderedMessage,
    TemplateSpec,
    build_context,
    compile_template,
)

ADA = ContactView(email="ada@uni.example", name="Ada", attributes={"course": "CSE456"})


def spec(**overrides: object) -> TemplateSpec:
    fields: dict = {
        "subject": "How was {{ contact.attributes.course }}?",
        "html": "<p>Hi {{ contact.name }}</p>",
        "text": "Hi {{ contact.name }}",
        "from_email": "surveys@uni.example",
        "from_name": "Surveys",
        "reply_to": "help@uni.example",
    }
    fields.update(overrides)
    return TemplateSpec(**fields)


def compiled(**overrides: object) -> CompiledTemplate:
    return compile_template(spec(**overrides))


def render(who: ContactView = ADA, **overrides: object) -> RenderedMessage:
    return compiled(**overrides).render(build_context(who, "Survey", "https://u.example/x"))


def invalid_fields(**overrides: object) -> set[str]:
    with pytest.raises(ValidationError) as caught:
        spec(**overrides)
    return {".".join(map(str, error["loc"])) for error in caught.value.errors()}


def save_problems(**overrides: object) -> dict[str, str]:
    with pytest.raises(InvalidTemplate) as caught:
        compiled(**overrides)
    return {p.field: p.message for p in caught.value.problems}


# --- the spec ---------------------------------------------------------------------------


def test_api_example_spec_is_accepted() -> None:
    assert spec().from_email == "surveys@uni.example"


@pytest.mark.parametrize("subject", ["Hi\r\nBcc: all@x.example", "Hi\nthere", "Hi\rthere"])
def test_header_injection_in_subject_is_rejected(subject: str) -> None:
    assert invalid_fields(subject=subject) == {"subject"}


@pytest.mark.parametrize("value", ["Surveys\x00", "Surveys\t", "Sur\u2028veys", "Sur\x85veys"])
def test_control_character_in_from_name_is_rejected(value: str) -> None:
    assert invalid_fields(from_name=value) == {"from_name"}


def test_header_injection_in_reply_to_is_rejected() -> None:
    assert invalid_fields(reply_to="help@uni.example\r\nBcc: x@y.example") == {"reply_to"}


@pytest.mark.parametrize(
    "address",
    [
        "",
        "surveys",
        "surveys@localhost",
        "surveys@uni.example\n",
        "two@@uni.example",
        "a b@uni.example",
        ".lead@uni.example",
        "x@-bad.example",
        "x@1.2.3.4",
        "é@uni.example",
        "x" * 65 + "@uni.example",
    ],
)
def test_invalid_from_email_is_rejected(address: str) -> None:
    assert invalid_fields(from_email=address) == {"from_email"}


@pytest.mark.parametrize("address", ["a@b.co", "first.last+tag@mail.uni.example", "o'neil@x-y.example"])
def test_ordinary_from_emails_are_accepted(address: str) -> None:
    assert spec(from_email=address).from_email == address


def test_invalid_reply_to_is_rejected() -> None:
    assert invalid_fields(reply_to="help") == {"reply_to"}


def test_empty_reply_to_is_allowed() -> None:
    assert spec(reply_to="").reply_to == ""


def test_spec_needs_html_or_text() -> None:
    with pytest.raises(ValidationError, match="at least one of html or text"):
        spec(html="", text=" ")


def test_text_only_spec_is_accepted() -> None:
    assert spec(html="").text


def test_unknown_spec_field_is_rejected() -> None:
    assert invalid_fields(bcc="all@uni.example") == {"bcc"}


def test_subject_over_998_characters_is_rejected() -> None:
    assert invalid_fields(subject="x" * 999) == {"subject"}


def test_blank_subject_is_rejected() -> None:
    assert invalid_fields(subject="   ") == {"subject"}


def test_body_over_512_kib_is_rejected() -> None:
    # 200 Ki characters of 3 bytes each: under the limit in characters, over it in bytes.
    assert invalid_fields(html="€" * (200 * 1024)) == {"html"}


def test_body_of_512_kib_is_accepted() -> None:
    assert spec(text="x" * (512 * 1024)).text


def test_spec_is_immutable() -> None:
    with pytest.raises(ValidationError):
        spec().subject = "changed"  # type: ignore[misc]


# --- compiling (save time) --------------------------------------------------------------


def test_syntax_error_is_reported_with_part_and_line() -> None:
    found = save_problems(text="Hi\nthere\n{% for %}")
    assert list(found) == ["template.text"]
    assert found["template.text"].startswith("line 3:")


@pytest.mark.parametrize(
    "source",
    [
        "{{ contact.__class__ }}",
        "{{ ''.__class__.__mro__ }}",
        "{{ contact['__class__'] }}",
        "{{ contact|attr('__class__') }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ x.mro() }}",
        "{{ f.func_globals }}",
        "{{ g.gi_frame.f_globals }}",
        "{% set c = ''.__class__ %}{{ c }}",
    ],
)
def test_sandbox_escape_is_rejected_at_save(source: str) -> None:
    assert "is not allowed" in save_problems(html=source)["template.html"]


def test_unknown_filter_is_rejected_at_save() -> None:
    assert "No filter named 'shell'" in save_problems(text="{{ x|shell }}")["template.text"]


def test_unknown_test_is_rejected_at_save() -> None:
    assert "No test named 'evil'" in save_problems(text="{{ x is evil }}")["template.text"]


@pytest.mark.parametrize(
    "source", ["{% include 'x.html' %}", "{% extends 'base' %}", "{% import 'm' as m %}"]
)
def test_include_extends_and_import_are_rejected_at_save(source: str) -> None:
    assert "template.html" in save_problems(html=source)


def test_problems_in_several_parts_are_all_reported() -> None:
    found = save_problems(subject="{{ x.__dict__ }}", html="{% for %}", text="{{ x|nope }}")
    assert set(found) == {"template.subject", "template.html", "template.text"}


def test_custom_path_prefix_is_used() -> None:
    with pytest.raises(InvalidTemplate) as caught:
        compile_template(spec(text="{{"), path="campaign.template")
    assert [p.field for p in caught.value.problems] == ["campaign.template.text"]


def test_ordinary_filters_and_loops_compile() -> None:
    source = "{% for c in contact.attributes.courses %}{{ c|upper }} {% endfor %}"
    who = ContactView(email="a@x.example", name="A", attributes={"courses": ["a", "b"]})
    assert render(who, text=source).text == "A B "


# --- rendering (per recipient) -------------------------------------------------------------


def test_api_example_renders() -> None:
    message = render()
    assert message == RenderedMessage(subject="How was CSE456?", html="<p>Hi Ada</p>", text="Hi Ada")


def test_html_is_autoescaped() -> None:
    who = ContactView(email="a@x.example", name="<b>Bob & Co</b>")
    assert render(who).html == "<p>Hi &lt;b&gt;Bob &amp; Co&lt;/b&gt;</p>"


def test_text_and_subject_are_not_escaped() -> None:
    who = ContactView(email="a@x.example", name="Bob & Co")
    message = render(who, subject="For {{ contact.name }}")
    assert (message.subject, message.text) == ("For Bob & Co", "Hi Bob & Co")


def test_missing_attribute_renders_empty() -> None:
    assert render(text="[{{ contact.attributes.nothing }}]").text == "[]"


def test_campaign_name_and_unsubscribe_url_are_in_context() -> None:
    message = render(text="{{ campaign.name }} {{ unsubscribe_url }}")
    assert message.text == "Survey https://u.example/x"


def test_render_error_raises_render_error() -> None:
    with pytest.raises(RenderError, match="template.text"):
        render(text="{{ 1 / 0 }}")


def test_runtime_sandbox_violation_raises_render_error() -> None:
    with pytest.raises(RenderError, match="SecurityError"):
        render(text="{{ contact.attributes.clear() }}")


def test_dynamic_private_attribute_does_not_leak() -> None:
    try:
        text = render(text="{{ contact['__cl' ~ 'ass__'] }}").text
    except RenderError:
        return
    assert "class" not in text


def test_undefined_nested_access_raises_render_error() -> None:
    with pytest.raises(RenderError):
        render(text="{{ contact.attributes.missing.deeper }}")


def test_huge_repetition_raises_render_error() -> None:
    with pytest.raises(RenderError, match="repetition too large"):
        render(text="{{ 'x' * 1000000000 }}")


def test_huge_power_raises_render_error() -> None:
    with pytest.raises(RenderError, match="exponent too large"):
        render(text="{{ 9 ** 999999 }}")


def test_small_arithmetic_still_works() -> None:
    assert render(text="{{ 2 ** 10 }} {{ 'ab' * 2 }}").text == "1024 abab"


def test_line_break_in_rendered_subject_raises_render_error() -> None:
    who = ContactView(email="a@x.example", name="Ada\r\nBcc: all@x.example")
    with pytest.raises(RenderError, match="line break"):
        render(who, subject="Hi {{ contact.name }}")


def test_rendered_subject_is_stripped() -> None:
    who = ContactView(email="a@x.example", name="Ada\n")
    assert render(who, subject="  Hi {{ contact.name }}").subject == "Hi Ada"


def test_empty_rendered_subject_raises_render_error() -> None:
    with pytest.raises(RenderError, match="empty"):
        render(subject="{{ contact.attributes.nothing }}")


def test_empty_part_renders_as_empty_string() -> None:
    assert render(html="").html == ""


def test_trailing_newline_of_a_body_is_kept() -> None:
    assert render(text="Bye\n").text == "Bye\n"


def test_rendering_cannot_change_the_contact() -> None:
    who = ContactView(email="a@x.example", name="A", attributes={"tags": ["a"]})
    with pytest.raises(RenderError):
        render(who, text="{{ contact.attributes.tags.append('b') }}")
    assert who.attributes == {"tags": ["a"]}


def test_compiled_template_is_reused_across_recipients() -> None:
    template = compiled(text="Hi {{ contact.name }}")
    names = [
        template.render(build_context(ContactView(f"{n}@x.example", n), "S", "u")).text for n in ("Ann", "Bo")
    ]
    assert names == ["Hi Ann", "Hi Bo"]


# --- context ---------------------------------------------------------------------------------


def test_build_context_has_the_documented_shape() -> None:
    assert build_context(ADA, "Survey", "https://u.example/x") == {
        "contact": {"email": "ada@uni.example", "name": "Ada", "attributes": {"course": "CSE456"}},
        "campaign": {"name": "Survey"},
        "unsubscribe_url": "https://u.example/x",
    }


def test_build_context_accepts_a_mapping() -> None:
    context = build_context({"email": "a@x.example", "name": None}, "S", "u")
    assert context["contact"] == {"email": "a@x.example", "name": "", "attributes": {}}


def test_build_context_copies_attributes() -> None:
    context = build_context(ADA, "S", "u")
    assert context["contact"]["attributes"] is not ADA.attributes


# --- properties ------------------------------------------------------------------------------


@given(name=st.text())
def test_html_part_always_escapes_the_name(name: str) -> None:
    who = ContactView(email="a@x.example", name=name)
    assert render(who, html="{{ contact.name }}").html == str(escape(name))


@given(value=st.one_of(st.text(), st.integers(), st.floats(), st.lists(st.text(max_size=3))))
def test_rendering_arbitrary_attribute_values_raises_only_render_error(value: object) -> None:
    who = ContactView(email="a@x.example", name="A", attributes={"v": value})
    try:
        message = render(who, subject="S {{ contact.attributes.v }}", text="{{ contact.attributes.v }}")
    except RenderError:
        return
    assert "\n" not in message.subject
