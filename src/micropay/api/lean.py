"""Lean routes for the hot endpoints, and the dispatcher that reaches them directly.

A ``LeanRoute`` is declared and documented like any route (its endpoint's signature gives the
OpenAPI entry: the body schema, the security scheme, the responses), but it is served without
FastAPI's per-request dependency solving, which costs more than the rest of a transfer. Its
endpoint may take only one JSON body parameter, the ``Request``, and one principal from
``require_roles``; anything else is refused when the route is made. Each request goes through
the same steps in the same order as a regular route, so it answers the same:

1. the body is read (413 over the size limit) and, when sent as JSON (by its Content-Type),
   parsed with orjson (400 ``body_not_json``);
2. the caller is authorised by ``authorize`` (401, 429, 403, then 400 for any query parameter);
3. the body is validated by the same pydantic field a regular route uses (400, same codes),
   unless the route's ``fast_validator`` vouches for it (a column-wise check of the same rules);
4. the endpoint runs with the validated body.

``LeanDispatch`` (installed by ``create_app``) sends ``POST`` requests for a lean route's exact
path straight to its handler, skipping the router's path matching, and renders any error
through the app's own exception handlers. Anything else goes on to the regular app.
"""

from __future__ import annotations

import email.message
import functools
import inspect
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import orjson
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute, APIRouter
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from micropay.api.auth import Principal, RoleCheck, authorize, bearer_key
from micropay.api.routing import QUERY_NAMES_KEY, OrjsonRoute
from micropay.api.settings import Role

Handler = Callable[[Request], Coroutine[Any, Any, Response]]
ExceptionHandler = Callable[[Request, Any], Response | Awaitable[Response]]
"""As Starlette takes them (``app.exception_handlers``): async, or sync (run in a thread)."""
EndpointT = TypeVar("EndpointT", bound=Callable[..., Coroutine[Any, Any, Response]])

_NO_QUERY_NAMES: frozenset[str] = frozenset()
_JSON_CONTENT_TYPE = "application/json"


class _NoBody:
    """An empty request body (validated as a missing one)."""


NO_BODY = _NoBody()


def _missing_body_error() -> dict[str, Any]:
    return {"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}


def _is_json(content_type: str) -> bool:
    """Whether a request's Content-Type is JSON, decided as FastAPI decides it."""
    if content_type == _JSON_CONTENT_TYPE:
        return True
    message = email.message.Message()
    message["content-type"] = content_type
    if message.get_content_maintype() != "application":
        return False
    subtype = message.get_content_subtype()
    return subtype == "json" or subtype.endswith("+json")


def _content_type_and_authorization(scope: Scope) -> tuple[str | None, str | None]:
    """The first ``Content-Type`` and ``Authorization`` headers (as Starlette's ``Headers.get``)."""
    content_type: bytes | None = None
    authorization: bytes | None = None
    for name, value in scope["headers"]:
        if name == b"content-type":
            if content_type is None:
                content_type = value
        elif name == b"authorization" and authorization is None:
            authorization = value
    return (
        None if content_type is None else content_type.decode("latin-1"),
        None if authorization is None else authorization.decode("latin-1"),
    )


async def read_body(receive: Receive) -> bytes:
    """The whole request body (413 through the body limit's receive; 400 if the client leaves)."""
    chunks: list[bytes] = []
    try:
        while True:
            message = await receive()
            if message["type"] == "http.request":
                chunk = message.get("body", b"")
                if chunk:
                    chunks.append(chunk)
                if not message.get("more_body", False):
                    break
            elif message["type"] == "http.disconnect":
                raise ClientDisconnect()
    except HTTPException:
        raise  # the body size limit (413)
    except Exception as error:
        raise HTTPException(status_code=400, detail="There was an error parsing the body") from error
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def parse_json_body(body: bytes, content_type: str | None) -> Any:
    """The request body: parsed if sent as JSON, the raw bytes if sent as anything else (a
    Content-Type is required: they then fail validation), ``NO_BODY`` if empty."""
    if not body:
        return NO_BODY
    if not content_type or not _is_json(content_type):
        return body
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise RequestValidationError(
            [
                {
                    "type": "json_invalid",
                    "loc": ("body", error.pos),
                    "msg": "JSON decode error",
                    "input": {},
                    "ctx": {"error": error.msg},
                }
            ],
            body=error.doc,
        ) from error


@dataclass(frozen=True, slots=True)
class _Plan:
    """How a lean route's endpoint takes its arguments."""

    body_name: str
    validate: Callable[..., tuple[Any, list[dict[str, Any]]]]
    roles: RoleCheck
    principal_name: str
    request_name: str | None


def _plan(route: APIRoute) -> _Plan:
    dependant: Dependant = route.dependant
    where = f"lean route {sorted(route.methods or ())} {route.path}"
    if (
        dependant.path_params
        or dependant.query_params
        or dependant.header_params
        or dependant.cookie_params
        or dependant.websocket_param_name
        or dependant.http_connection_param_name
        or dependant.response_param_name
        or dependant.background_tasks_param_name
        or dependant.security_scopes_param_name
    ):
        raise TypeError(f"{where}: takes only a JSON body, the Request and a principal")
    if len(dependant.body_params) != 1 or route.body_field is None:
        raise TypeError(f"{where}: needs exactly one JSON body parameter")
    role_check = dependant.dependencies[0].call if len(dependant.dependencies) == 1 else None
    if not isinstance(role_check, RoleCheck):
        raise TypeError(f"{where}: needs exactly one principal parameter from require_roles(...)")
    principal_name = dependant.dependencies[0].name
    if principal_name is None:
        raise TypeError(f"{where}: require_roles(...) must be a parameter (its principal is passed in)")
    body_field = dependant.body_params[0]
    return _Plan(
        body_name=body_field.name,
        validate=body_field.validate,
        roles=role_check,
        principal_name=principal_name,
        request_name=dependant.request_param_name,
    )


FastValidator = Callable[[Any], Any]
"""Given the parsed body: the endpoint's body value if it can vouch that the body field would
accept the body as it is (and make that value of it), else None (then the field validates)."""


class LeanRoute(OrjsonRoute):
    """A route served by a lean handler (see the module docstring); ``lean_handler`` is it.
    ``validate_body`` validates a parsed body as the handler does: ``(value, errors)``."""

    lean_handler: Handler
    validate_body: Callable[[Any], tuple[Any, list[dict[str, Any]]]]
    roles: frozenset[Role]
    fast_validator: FastValidator | None = None

    def get_route_handler(self) -> Handler:
        plan = _plan(self)
        self.validate_body = functools.partial(plan.validate, values={}, loc=("body",))
        self.roles = plan.roles.roles
        endpoint = self.dependant.call
        if endpoint is None:
            raise TypeError(f"lean route {self.path} has no endpoint")
        route = self
        roles = plan.roles.roles
        validate = plan.validate
        body_name, principal_name, request_name = plan.body_name, plan.principal_name, plan.request_name

        async def handler(request: Request) -> Response:
            scope = request.scope
            scope[QUERY_NAMES_KEY] = _NO_QUERY_NAMES
            content_type, authorization = _content_type_and_authorization(scope)
            received = parse_json_body(await read_body(request.receive), content_type)
            principal: Principal = await authorize(request, bearer_key(authorization), roles)
            if received is NO_BODY:
                raise RequestValidationError([_missing_body_error()])
            fast_validator = route.fast_validator
            value = None if fast_validator is None else fast_validator(received)
            if value is None:
                value, errors = validate(received, {}, loc=("body",))
                if errors:
                    raise RequestValidationError(errors, body=received)
            arguments: dict[str, Any] = {body_name: value, principal_name: principal}
            if request_name is not None:
                arguments[request_name] = request
            response: Response = await endpoint(**arguments)
            return response

        self.lean_handler = handler
        return handler


def lean_post(
    router: APIRouter, path: str, *, fast_validator: FastValidator | None = None, **options: Any
) -> Callable[[EndpointT], EndpointT]:
    """Like ``@router.post(path, **options)``, for a ``LeanRoute`` (with its ``fast_validator``)."""

    def decorate(endpoint: EndpointT) -> EndpointT:
        router.add_api_route(path, endpoint, methods=["POST"], route_class_override=LeanRoute, **options)
        route = router.routes[-1]
        if not isinstance(route, LeanRoute) or route.endpoint is not endpoint:
            raise TypeError(f"lean route {path}: the router did not add it last")
        route.fast_validator = fast_validator
        return endpoint

    return decorate


def _lookup(handlers: Mapping[Any, ExceptionHandler], error: Exception) -> ExceptionHandler | None:
    for cls in type(error).__mro__:
        handler = handlers.get(cls)
        if handler is not None:
            return handler
    return None


def _is_async(handler: object) -> bool:
    while isinstance(handler, functools.partial):
        handler = handler.func
    return inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(type(handler).__call__)


class LeanEndpoint:
    """ASGI app serving one lean route; errors are rendered by the app's exception handlers
    (looked up by class, as Starlette does; ``Exception``'s handler answers the 500)."""

    def __init__(self, handler: Handler, exception_handlers: Mapping[Any, ExceptionHandler]) -> None:
        self._handler = handler
        self._exception_handlers = exception_handlers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive, send)
        try:
            response = await self._handler(request)
        except Exception as error:
            response = await render_exception(self._exception_handlers, request, error)
        await response(scope, receive, send)


async def render_exception(
    exception_handlers: Mapping[Any, ExceptionHandler], request: Request, error: Exception
) -> Response:
    """The response the app's exception handler for ``error`` makes (re-raises it if none)."""
    exception_handler = _lookup(exception_handlers, error)
    if exception_handler is None:
        raise error
    if _is_async(exception_handler):
        return await cast(Awaitable[Response], exception_handler(request, error))
    return await run_in_threadpool(cast(Callable[..., Response], exception_handler), request, error)


def lean_endpoints(
    routes: Iterable[APIRoute], exception_handlers: Mapping[Any, ExceptionHandler]
) -> dict[str, LeanEndpoint]:
    """The lean ``POST`` routes with fixed paths, by path."""
    return {
        route.path: LeanEndpoint(route.lean_handler, exception_handlers)
        for route in routes
        if isinstance(route, LeanRoute) and not route.param_convertors and route.methods == {"POST"}
    }


def lean_path(scope: Scope) -> str | None:
    """The path to look up among lean endpoints, or None if this request cannot be one."""
    if scope["type"] != "http" or scope["method"] != "POST" or scope.get("root_path"):
        return None
    path: str = scope["path"]
    return path


class LeanDispatch:
    """ASGI middleware: ``POST`` to a lean route's path goes straight to it, past the router."""

    def __init__(
        self, app: ASGIApp, routes: Iterable[APIRoute], exception_handlers: Mapping[Any, ExceptionHandler]
    ) -> None:
        self.app = app
        self.endpoints = lean_endpoints(routes, exception_handlers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = lean_path(scope)
        endpoint = None if path is None else self.endpoints.get(path)
        if endpoint is None:
            await self.app(scope, receive, send)
        else:
            await endpoint(scope, receive, send)
