"""Campaign previews: render one recipient's message exactly as a send would, sending nothing.

The unsubscribe link is the real signed one for that contact, so a tenant can check the
headers (RFC 8058 ``List-Unsubscribe`` and ``List-Unsubscribe-Post``) before scheduling.
"""

from __future__ import annotations

from email.utils import formataddr

from api.errors import ApiError, not_found
from api.schemas import PreviewPublic, PreviewRequest
from core.contact_tables import ContactTables
from core.criteria import ContactView, parse_criteria
from core.errors import FieldProblem, InvalidInput, RenderError
from core.ids import contact_id_for, normalize_email
from core.models import Campaign, Contact, Tenant
from core.settings import Settings
from core.storage import Storage
from core.templates import TemplateSpec, build_context, compile_template
from core.unsubscribe import UnsubscribeClaim, one_click_headers, unsubscribe_url

SAMPLE_CONTACT_ID = "sample"
SAMPLE_SCAN_ROWS = 1000
_SAMPLE = Contact(
    id=SAMPLE_CONTACT_ID, tenant_id="", email="sample.contact@example.com", name="Sample Contact",
)


def render_preview(
    storage: Storage, settings: Settings, tenant: Tenant, campaign: Campaign, request: PreviewRequest
) -> PreviewPublic:
    contact = choose_contact(storage, tenant, campaign, request)
    spec = TemplateSpec.model_validate(campaign.template)
    compiled = compile_template(spec, path="template")
    url = unsubscribe_url(
        settings.public_url, settings.signing_key, UnsubscribeClaim(tenant.id, contact.id, campaign.id)
    )
    try:
        rendered = compiled.render(build_context(contact, campaign.name, url))
    except RenderError as err:
        field, _, message = str(err).partition(": ")
        if not field.startswith("template."):
            field, message = "template", str(err)
        raise InvalidInput("the template does not render for this contact",
                           [FieldProblem(field, message)]) from err
    return PreviewPublic(
        subject=rendered.subject, html=rendered.html, text=rendered.text,
        headers=preview_headers(spec, contact, url),
    )


def preview_headers(spec: TemplateSpec, contact: Contact, url: str) -> dict[str, str]:
    headers = {
        "From": formataddr((spec.from_name, spec.from_email)) if spec.from_name else spec.from_email,
        "To": formataddr((contact.name, contact.email)) if contact.name else contact.email,
    }
    if spec.reply_to:
        headers["Reply-To"] = spec.reply_to
    headers.update(one_click_headers(url))
    return headers


def choose_contact(storage: Storage, tenant: Tenant, campaign: Campaign, request: PreviewRequest) -> Contact:
    """The named contact; else the first of the tenant the criteria select; else a sample."""
    table = ContactTables(storage)
    if request.contact_id is not None:
        entity = table.find(tenant.id, request.contact_id)
        if entity is None:
            raise not_found("contact")
        return Contact.from_entity(entity)
    if request.email is not None:
        contact_id = contact_id_for(tenant.contact_salt, normalize_email(request.email))
        entity = table.find(tenant.id, contact_id)
        if entity is None:
            raise ApiError(404, "not_found", "no contact has this address",
                           [FieldProblem("email", "no contact has this address")])
        return Contact.from_entity(entity)
    return _first_selected(storage, tenant, campaign) or _SAMPLE


def _first_selected(storage: Storage, tenant: Tenant, campaign: Campaign) -> Contact | None:
    criteria = parse_criteria(campaign.criteria or None, path="criteria")
    items, _ = ContactTables(storage).page_after(tenant.id, "", SAMPLE_SCAN_ROWS)
    for entity in items:
        contact = Contact.from_entity(entity)
        if criteria.matches(_view(contact)):
            return contact
    return None


def _view(contact: Contact) -> ContactView:
    return ContactView(contact.email, contact.name, contact.attributes, contact.lists, contact.state)
