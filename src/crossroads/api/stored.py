"""Small endpoints beside inference: stored Responses (GET/DELETE /responses/{id}) and Messages token counting."""

from __future__ import annotations

from typing import TYPE_CHECKING

from crossroads.accounting.exchange import estimate_prompt_tokens
from crossroads.api.asgi import Request, respond_json
from crossroads.errors import GatewayError
from crossroads.formats.chat import check_chat_body, parse_json_object
from crossroads.formats.messages import messages_to_chat

if TYPE_CHECKING:
    from crossroads.api.app import Gateway


async def _owned(gateway: Gateway, request: Request) -> tuple[str, dict]:
    response_id = request.path_params["id"]
    stored = await gateway.services.store.get_response(response_id)
    principal = request.principal
    if stored is None or (not principal.is_master and stored[0] != principal.key_hash):
        raise GatewayError(404, f"Response with id '{response_id}' not found.")
    return response_id, stored[2]


async def get_response(gateway: Gateway, request: Request) -> None:
    _, response = await _owned(gateway, request)
    await respond_json(request, 200, response)


async def delete_response(gateway: Gateway, request: Request) -> None:
    response_id, _ = await _owned(gateway, request)
    await gateway.services.store.delete_response(response_id)
    await respond_json(request, 200, {"id": response_id, "object": "response", "deleted": True})


async def count_tokens(gateway: Gateway, request: Request) -> None:
    """Anthropic's count_tokens: the gateway's own estimate (no upstream call), the number credit checks use."""
    native = parse_json_object(request.body)
    native.setdefault("max_tokens", 1)  # not part of a count_tokens request, but the converter requires it
    body, _ = messages_to_chat(native)
    await respond_json(request, 200, {"input_tokens": estimate_prompt_tokens(check_chat_body(body))})
