"""Safe text templates for SMS and mail: ``$name`` or ``${name}`` substitution, nothing more.

Built on string.Template, which only looks names up in a dict: no attribute access,
no indexing, no code. ``$$`` writes a literal ``$``. A template is checked when the
rules file is loaded; a name the request does not have is a permanent failure
(UnusableRequest).
"""

from string import Template
from typing import Any

from pydantic import GetCoreSchemaHandler
from pydantic_core import core_schema

from txmail.core.events import FallbackRequest
from txmail.fallback.handler import UnusableRequest


class TextTemplate:
    def __init__(self, text: str) -> None:
        self._template = Template(text)
        if not self._template.is_valid():
            raise ValueError(
                f"invalid template {text!r}: write $name or ${{name}}, and $$ for a literal $"
            )
        self.text = text

    @property
    def names(self) -> list[str]:
        return self._template.get_identifiers()

    def render(self, context: dict[str, str], field: str) -> str:
        missing = [name for name in self.names if name not in context]
        if missing:
            raise UnusableRequest(
                f"template {field!r} uses {', '.join('$' + n for n in missing)}, which this "
                f"request does not have (it has: {', '.join(sorted(context))})"
            )
        return self._template.substitute(context)

    def __repr__(self) -> str:
        return f"TextTemplate({self.text!r})"

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        """As a field of a rules-file model: read from a string, checked at load time."""
        return core_schema.no_info_plain_validator_function(
            _from_rules_file,
            serialization=core_schema.plain_serializer_function_ser_schema(lambda t: t.text),
        )


def _from_rules_file(value: object) -> TextTemplate:
    if isinstance(value, TextTemplate):
        return value
    if not isinstance(value, str):
        raise ValueError("a template must be a string")
    return TextTemplate(value)


def template_context(request: FallbackRequest) -> dict[str, str]:
    """The names a template may use: the registered variables, then the request's own
    fields (which win on a clash, so a variable cannot disguise the request).
    Fields the request does not have (``reason`` of a timeout, say) are absent, also
    when a variable has that name: it must not stand in for the missing field."""
    context = {name: str(value) for name, value in request.variables.items()}
    context.update(request.braze_timestamps)
    own: dict[str, str | None] = {
        "idempotency_key": request.idempotency_key,
        "trigger": request.trigger.value,
        "dispatch_id": request.dispatch_id,
        "external_send_id": request.external_send_id,
        "campaign_api_id": request.campaign_api_id,
        "reason": request.reason,
        "decided_at": request.decided_at.isoformat(),
        "recipient_email": request.recipient.email,
        "recipient_phone": request.recipient.phone,
        "braze_health": request.braze_health,
    }
    for name, value in own.items():
        if value is None:
            context.pop(name, None)
        else:
            context[name] = value
    return context
