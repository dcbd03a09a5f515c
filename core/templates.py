"""Campaign templates: validate and compile at save time, render per recipient.

Tenants write the templates, so they run in Jinja's immutable sandbox, and anything we can
see is dangerous is refused at save time (422 with ``template.<part>``) rather than per
recipient: syntax errors, unknown filters/tests, ``_private`` or frame/globals attributes,
includes/imports. What only shows at render time (a sandbox SecurityError, a TypeError, a
missing nested value) becomes ``RenderError`` and skips that one recipient.

The HTML part is autoescaped; subject and text are not (they are not HTML). Templates are
compiled once per campaign and reused for every recipient.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jinja2 import Template, TemplateSyntaxError, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from core.errors import FieldProblem, InvalidTemplate, RenderError

MAX_SUBJECT_CHARS = 998
MAX_BODY_BYTES = 512 * 1024
MAX_REPEAT_SIZE = 100_000
MAX_EXPONENT = 1_000
MAX_POWER_BITS = 100_000

# C0 and C1 controls, DEL and Unicode line/paragraph separators: no place in a header.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_LINE_BREAK = re.compile(r"[\r\n\v\f\x1c-\x1e\x85\u2028\u2029]")
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_EMAIL = re.compile(rf"(?P<local>{_ATOM}(?:\.{_ATOM})*)@(?P<domain>(?:{_LABEL}\.)+{_LABEL})")
_FORBIDDEN_ATTRIBUTES = frozenset(
    {
        "mro", "func_globals", "func_code", "func_closure", "f_globals", "f_locals",
        "f_builtins", "f_code", "f_back", "gi_frame", "gi_code", "cr_frame", "cr_code",
        "ag_frame", "ag_code", "tb_frame", "tb_next", "co_code",
    }
)  # fmt: skip


def is_email(value: str) -> bool:
    """A plain ASCII addr-spec with a dotted domain: enough to stop typos and injection."""
    match = _EMAIL.fullmatch(value)
    return (
        match is not None
        and len(value) <= 254
        and len(match["local"]) <= 64
        and not match["domain"].rsplit(".", 1)[1].isdigit()
    )


class TemplateSpec(BaseModel):
    """A campaign's template as stored; validation here is what makes it safe to send."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    subject: str = Field(min_length=1, max_length=MAX_SUBJECT_CHARS)
    html: str = ""
    text: str = ""
    from_email: str
    from_name: str = ""
    reply_to: str = ""

    @field_validator("subject", "from_name", "reply_to")
    @classmethod
    def _no_header_injection(cls, value: str) -> str:
        if _CONTROL.search(value):
            raise ValueError("must not contain line breaks or control characters")
        return value

    @field_validator("subject")
    @classmethod
    def _subject_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value

    @field_validator("html", "text")
    @classmethod
    def _body_size(cls, value: str) -> str:
        if len(value) > MAX_BODY_BYTES // 4 and len(value.encode()) > MAX_BODY_BYTES:
            raise ValueError(f"must be at most {MAX_BODY_BYTES // 1024} KiB")
        return value

    @field_validator("from_email")
    @classmethod
    def _from_is_email(cls, value: str) -> str:
        if not is_email(value):
            raise ValueError("must be a valid email address")
        return value

    @field_validator("reply_to")
    @classmethod
    def _reply_to_is_email(cls, value: str) -> str:
        if value and not is_email(value):
            raise ValueError("must be a valid email address")
        return value

    @model_validator(mode="after")
    def _has_body(self) -> TemplateSpec:
        if not self.html.strip() and not self.text.strip():
            raise ValueError("at least one of html or text must be non-empty")
        return self


@dataclass(frozen=True, slots=True)
class RenderedMessage:
    """One recipient's message content; headers are the sender's business."""

    subject: str
    html: str
    text: str


class _Sandbox(ImmutableSandboxedEnvironment):
    """The sandbox plus limits on ``*`` and ``**``, which can otherwise eat a worker."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(right, (int, float)):
            size = left.bit_length() if isinstance(left, int) else 1
            if abs(right) > MAX_EXPONENT or size * abs(right) > MAX_POWER_BITS:
                raise SecurityError("exponent too large")
        if operator == "*":
            for seq, count in ((left, right), (right, left)):
                sized = isinstance(seq, (str, list, tuple)) and isinstance(count, int)
                if sized and len(seq) * count > MAX_REPEAT_SIZE:
                    raise SecurityError("repetition too large")
        return super().call_binop(context, operator, left, right)


_HTML_ENV = _Sandbox(autoescape=True, keep_trailing_newline=True)
_PLAIN_ENV = _Sandbox(autoescape=False, keep_trailing_newline=True)


class CompiledTemplate:
    """Compiled subject/html/text, reused for every recipient of a campaign."""

    __slots__ = ("_html", "_subject", "_text", "spec")

    def __init__(
        self,
        spec: TemplateSpec,
        subject: Template | None,
        html: Template | None,
        text: Template | None,
    ) -> None:
        self.spec = spec
        self._subject = subject
        self._html = html
        self._text = text

    def render(self, context: dict[str, Any]) -> RenderedMessage:
        """Render for one recipient; any failure is a RenderError naming the part."""
        parts: dict[str, str] = {}
        for part, template in (
            ("subject", self._subject),
            ("html", self._html),
            ("text", self._text),
        ):
            try:
                parts[part] = template.render(context) if template is not None else ""
            except Exception as exc:  # sandbox, undefined, type errors, recursion...
                raise RenderError(f"template.{part}: {type(exc).__name__}: {exc}") from exc
        subject = parts["subject"].strip()
        if _LINE_BREAK.search(subject):
            raise RenderError("rendered subject contains a line break")
        if not subject:
            raise RenderError("rendered subject is empty")
        return RenderedMessage(subject=subject, html=parts["html"], text=parts["text"])


def compile_template(spec: TemplateSpec, path: str = "template") -> CompiledTemplate:
    """Compile once at save time; raise InvalidTemplate with every part's problem."""
    problems: list[FieldProblem] = []
    compiled: dict[str, Template | None] = {}
    for part, env in (
        ("subject", _PLAIN_ENV),
        ("html", _HTML_ENV),
        ("text", _PLAIN_ENV),
    ):
        source = getattr(spec, part)
        if not source:
            compiled[part] = None
            continue
        try:
            tree = env.parse(source)
            if message := _forbidden_use(tree):
                problems.append(FieldProblem(f"{path}.{part}", message))
                continue
            compiled[part] = env.from_string(tree)
        except TemplateSyntaxError as exc:
            problems.append(FieldProblem(f"{path}.{part}", f"line {exc.lineno}: {exc.message or exc}"))
    if problems:
        raise InvalidTemplate("invalid template", problems)
    return CompiledTemplate(spec, compiled["subject"], compiled["html"], compiled["text"])


def _forbidden_use(tree: nodes.Template) -> str | None:
    """The first thing in the tree that the sandbox must never be asked to allow."""
    for stmt in tree.find_all((nodes.Extends, nodes.Include, nodes.Import, nodes.FromImport)):
        return f"line {stmt.lineno}: templates cannot extend, include or import others"
    for node in tree.find_all((nodes.Getattr, nodes.Getitem, nodes.Filter)):
        if isinstance(node, nodes.Getattr):
            name: object = node.attr
        elif isinstance(node, nodes.Getitem):
            name = node.arg.value if isinstance(node.arg, nodes.Const) else None
        elif (isinstance(node, nodes.Filter) and node.name == "attr"
              and node.args and isinstance(node.args[0], nodes.Const)):
            name = node.args[0].value
        else:
            continue
        if isinstance(name, str) and (name.startswith("_") or name in _FORBIDDEN_ATTRIBUTES):
            return f"line {node.lineno}: access to '{name}' is not allowed"
    return None


def build_context(contact: Any, campaign_name: str, unsubscribe_url: str) -> dict[str, Any]:
    """The documented template context (API.md); copies so a template cannot touch the contact."""
    if isinstance(contact, Mapping):
        email, name, attributes = (
            contact.get("email"),
            contact.get("name"),
            contact.get("attributes"),
        )
    else:
        email, name, attributes = contact.email, contact.name, contact.attributes
    return {
        "contact": {
            "email": email or "",
            "name": name or "",
            "attributes": dict(attributes or {}),
        },
        "campaign": {"name": campaign_name},
        "unsubscribe_url": unsubscribe_url,
    }
