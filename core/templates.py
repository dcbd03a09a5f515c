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

import copy
import re
import secrets
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

    def render_subject(self, context: dict[str, Any]) -> str:
        """The subject alone, rendered and checked exactly as ``render`` does."""
        return CompiledTemplate(self.spec, self._subject, None, None).render(context).subject

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


# -- one body for many recipients (SendGrid substitutions) ---------------------------------
#
# A job whose template uses recipient data only as plain values ({{ contact.name }},
# {{ contact.attributes.plan }}, {{ unsubscribe_url }}) can be sent as one body with a
# placeholder where each value goes, plus each recipient's values: one provider request for
# up to 1,000 recipients (``providers.sendgrid.SendGridProvider.send_batch``). Any logic on
# recipient data (if/for/set, filters, tests, arithmetic) keeps the per-recipient render.

# Roots of the context a value may come from; ``campaign`` is the same for every recipient.
_RECIPIENT_ROOTS = frozenset({"contact", "unsubscribe_url"})
_SHARED_ROOTS = frozenset({"campaign"})
# SendGrid's limit on one personalization's substitutions (their JSON, in bytes).
MAX_SUBSTITUTION_BYTES = 10_000


def _value_root(node: nodes.Node) -> str | None:
    """The context name a plain lookup chain starts from (``contact.attributes['x']``), else None."""
    while isinstance(node, (nodes.Getattr, nodes.Getitem)):
        if isinstance(node, nodes.Getitem) and not (
            isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, (str, int))
        ):
            return None
        node = node.node
    return node.name if isinstance(node, nodes.Name) and node.ctx == "load" else None


def _plain_pieces(env: _Sandbox, source: str) -> list[str | nodes.Expr] | None:
    """The part as literal text and plain value lookups, in order; None if it has any logic."""
    pieces: list[str | nodes.Expr] = []
    for stmt in env.parse(source).body:
        if not isinstance(stmt, nodes.Output):
            return None
        for node in stmt.nodes:
            if isinstance(node, nodes.TemplateData):
                pieces.append(node.data)
            elif _value_root(node) in _RECIPIENT_ROOTS | _SHARED_ROOTS:
                pieces.append(node)
            else:
                return None
    return pieces


def substitutable(template: TemplateSpec) -> bool:
    """True when the html and text parts use recipient data only as plain substituted values.

    The subject may hold anything: it is rendered per recipient either way (SendGrid takes a
    subject per personalization), which also keeps its strip and line-break checks exact.
    """
    return all(
        _plain_pieces(env, getattr(template, part)) is not None
        for part, env in (("html", _HTML_ENV), ("text", _PLAIN_ENV))
        if getattr(template, part)
    )


@dataclass(frozen=True)
class Skeleton:
    """A job's body with a placeholder per recipient value, and how to fill it for one recipient.

    ``substitute(html, substitutions_for(context))`` (replace each key by its value, as SendGrid
    does) gives exactly ``compile_template(spec).render(context).html`` (and text): each value
    is rendered by the same sandbox, escaped for HTML and not for text, as the whole part would.
    """

    compiled: CompiledTemplate
    html: str
    text: str
    # placeholder -> a one-expression template in the part's environment
    values: dict[str, Template]
    # every value in one template (text values in an ``autoescape false`` scope), each followed by
    # ``separator``: one render per recipient instead of one per value (see ``_all_values``)
    together: Template | None = None
    separator: str = ""

    def substitutions_for(self, context: dict[str, Any]) -> dict[str, str]:
        """One recipient's values by placeholder; RenderError where the whole render would fail.

        The values are rendered together in one pass; should that fail, or should a value hold
        the separator (a recipient would have to guess the job's nonce), each is rendered alone,
        which gives the same values and the same error as before."""
        if self.together is not None:
            try:
                pieces = self.together.render(context).split(self.separator)
            except Exception:  # rendered alone below, to name the failure exactly as before
                pieces = []
            if len(pieces) == len(self.values) + 1 and pieces[-1] == "":
                return dict(zip(self.values, pieces[:-1], strict=True))
        out: dict[str, str] = {}
        for key, template in self.values.items():
            try:
                out[key] = template.render(context)
            except Exception as exc:  # sandbox, undefined, type errors...
                raise RenderError(f"template: {type(exc).__name__}: {exc}") from exc
        return out

    def message_for(self, context: dict[str, Any]) -> tuple[RenderedMessage, dict[str, str]]:
        """The recipient's message as a batch sends it: its own subject, the skeleton bodies and
        its substitutions (the subject renders and checks exactly as ``CompiledTemplate.render``)."""
        subject = self.compiled.render_subject(context)
        message = RenderedMessage(subject=subject, html=self.html, text=self.text)
        return message, self.substitutions_for(context)


def render_skeleton(template: TemplateSpec, campaign_name: str) -> Skeleton:
    """The body of a ``substitutable`` template once per job, with placeholders for recipient values.

    Campaign values are rendered in place; each distinct recipient value of a part gets one
    placeholder, ``-mr<n>-<nonce>-``: the nonce is drawn per job and checked absent from the
    template's text, so neither the template nor a recipient can hit a placeholder by chance.
    Raises ``ValueError`` for a template that is not ``substitutable``.
    """
    compiled = compile_template(template)
    nonce = secrets.token_hex(6)
    while nonce in template.html or nonce in template.text:
        nonce = secrets.token_hex(6)
    shared = {"campaign": {"name": campaign_name}}
    values: dict[str, Template] = {}
    keys: dict[tuple[str, str], str] = {}
    bodies: dict[str, str] = {}
    value_nodes: list[tuple[str, nodes.Expr]] = []  # (part, node) in the order of ``values``
    for part, env in (("html", _HTML_ENV), ("text", _PLAIN_ENV)):
        source = getattr(template, part)
        pieces = _plain_pieces(env, source) if source else []
        if pieces is None:
            raise ValueError(f"template.{part} uses recipient data in logic; render per recipient")
        out: list[str] = []
        for piece in pieces:
            if isinstance(piece, str):
                out.append(piece)
                continue
            expression = source_of(piece)
            one = env.from_string(nodes.Template([nodes.Output([piece], lineno=1)], lineno=1))
            if _value_root(piece) in _SHARED_ROOTS:
                out.append(one.render(shared))
                continue
            key = keys.setdefault((part, expression), f"-mr{len(keys)}-{nonce}-")
            if key not in values:
                value_nodes.append((part, piece))
            values[key] = one
            out.append(key)
        bodies[part] = "".join(out)
    separator = f"\x00-mr-{nonce}-\x00"
    together = _all_values(value_nodes, separator) if values else None
    return Skeleton(compiled, bodies["html"], bodies["text"], values, together, separator)


def _all_values(value_nodes: list[tuple[str, nodes.Expr]], separator: str) -> Template:
    """One template printing every value, each followed by ``separator``, in the HTML environment:
    html values autoescaped, text values inside an ``autoescape false`` scope. The two sandboxes
    differ only in ``autoescape``, so each value renders exactly as its one-expression template."""
    body: list[nodes.Node] = []
    for part, node in value_nodes:
        output = nodes.Output([copy.deepcopy(node)], lineno=1)
        if part == "text":
            body.append(nodes.ScopedEvalContextModifier(
                [nodes.Keyword("autoescape", nodes.Const(False), lineno=1)], [output], lineno=1))
        else:
            body.append(output)
        body.append(nodes.Output([nodes.TemplateData(separator, lineno=1)], lineno=1))
    return _HTML_ENV.from_string(nodes.Template(body, lineno=1))


def substitutions_for(skeleton: Skeleton, context: dict[str, Any]) -> dict[str, str]:
    """One recipient's values for ``skeleton`` (see ``Skeleton.substitutions_for``)."""
    return skeleton.substitutions_for(context)


def source_of(node: nodes.Node) -> str:
    """A lookup chain as a stable key (``contact.attributes['x']`` and ``contact.attributes.x``
    differ in text but not in value; the key only has to be the same for the same node)."""
    if isinstance(node, nodes.Getattr):
        return f"{source_of(node.node)}.{node.attr}"
    if isinstance(node, nodes.Getitem):
        return f"{source_of(node.node)}[{node.arg.value!r}]"  # type: ignore[attr-defined]
    return str(node.name)  # type: ignore[attr-defined]
