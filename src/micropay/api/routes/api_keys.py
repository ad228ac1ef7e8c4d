"""API keys (admin): create (the key is shown once), list, read, revoke."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request
from starlette.responses import Response

from micropay.api.auth import Admin
from micropay.api.keys import (
    API_KEY_KIND,
    ApiKeyRecord,
    check_subject,
    create_key_operation,
    new_key,
    new_key_id,
    revoke_key_operation,
)
from micropay.api.pagination import Page, split_page
from micropay.api.routes.docs import create_responses, read_responses, write_responses
from micropay.api.routing import OrjsonRoute
from micropay.api.schemas import ID_PATTERN, ApiKeyIn, ApiKeyList, ApiKeyOut
from micropay.api.serialise import JsonResponse, created, page
from micropay.api.services import get_services
from micropay.errors import NotFound
from micropay.ledger.limits import ID_LENGTH_MAX

router = APIRouter(prefix="/v1/api_keys", tags=["api keys"], route_class=OrjsonRoute)

KeyIdPath = Annotated[str, Path(min_length=1, max_length=ID_LENGTH_MAX, pattern=ID_PATTERN, description="The key id.")]


def _not_found(key_id: str) -> NotFound:
    return NotFound("api_key_not_found", f"No API key {key_id}.", "key_id")


@router.post("", status_code=201, response_model=ApiKeyOut, responses=create_responses(ApiKeyOut))
async def create_api_key(body: ApiKeyIn, request: Request, _caller: Admin) -> Response:
    """Create a key for a role (and the subject it acts as). The answer holds the key, once."""
    check_subject(body.role, body.subject_id)
    key_id = body.id or new_key_id()
    key = new_key(key_id)
    operation = create_key_operation(key_id, body.role, body.subject_id, dict(body.metadata), key)
    record, is_replay = await get_services(request).engine.call_async(operation)
    return created(record.render(None if is_replay else key), replayed=is_replay)


@router.get("", response_model=ApiKeyList, responses=read_responses())
def list_api_keys(request: Request, _caller: Admin, page_params: Page) -> Response:
    """Keys ordered by id, revoked ones included; never the keys themselves."""
    store = get_services(request).engine.store
    rows = store.list_documents(API_KEY_KIND, page_params.starting_after, page_params.limit + 1)
    data, has_more = split_page(rows, page_params.limit)
    return JsonResponse(page([ApiKeyRecord.from_json(body).render() for _, body in data], has_more))


@router.get("/{key_id}", response_model=ApiKeyOut, responses=read_responses())
def get_api_key(key_id: KeyIdPath, request: Request, _caller: Admin) -> Response:
    body = get_services(request).engine.store.read_document(API_KEY_KIND, key_id)
    if body is None:
        raise _not_found(key_id)
    return JsonResponse(ApiKeyRecord.from_json(body).render())


@router.delete("/{key_id}", response_model=ApiKeyOut, responses=write_responses())
async def revoke_api_key(key_id: KeyIdPath, request: Request, _caller: Admin) -> Response:
    """Revoke a key: it stops authenticating at once. Revoking again answers the same."""
    services = get_services(request)
    record = await services.engine.call_async(revoke_key_operation(key_id))
    if record is None:
        raise _not_found(key_id)
    services.authenticator.remember(record)
    services.rate_limiter.forget(key_id)
    return JsonResponse(record.render())
