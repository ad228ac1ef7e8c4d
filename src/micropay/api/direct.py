"""The direct lane: plain single transfers answered without an ASGI task.

``POST /v1/transfers`` carries one small transfer, and on this hot path the ASGI cycle (a task
per request, the scope, the receive and send coroutines, the header checks of each send) costs
more than everything the transfer itself needs. The HTTP protocol (``micropay.cli.protocol``)
keeps the head of a request the lane ``wants`` and, once its body is in, offers it to ``take``,
which either takes it whole or declines it having changed nothing; a declined request goes
through the ASGI app as any other.

It takes only a request the lean route would accept as it is: the path alone (no query string);
exactly one ``Content-Type: application/json`` and one ``Authorization: Bearer`` header, with a
key verified within the key cache's TTL (``Authenticator.known``) whose role the route admits; a
body that parses and validates exactly as the route validates it, and is not ``linked``; and a
rate-limit token (spent last, so a declined request never spends one). Everything else, every
error the caller could have made, is answered by the app. Once taken, the transfer goes to the
same coalescer as the route's, and the answer is made by the same function
(``transfer_response``), its refusals rendered by the app's own exception handlers: the lane
answers what the route answers, byte for byte.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from functools import partial
from typing import Any, Protocol

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Scope

from micropay.api.auth import bearer_key
from micropay.api.lean import ExceptionHandler, LeanRoute, render_exception
from micropay.api.routes.transfers import to_request, transfer_response
from micropay.api.schemas import plain_transfer
from micropay.api.services import Services
from micropay.errors import ApiError, MalformedRequest, RateLimited
from micropay.ledger import TransferFlags, TransferOutcome, TransferRequest

PATH = "/v1/transfers"
BODY_BYTES_MAX = 16 * 1024
"""Largest body the lane takes (a single transfer with full metadata is far smaller); a larger
one, or one without a Content-Length, goes through the app."""
ERRORS_RENDERING_MAX = 1024
"""Most refusals being rendered at once (each a small task); past it the lane declines."""

Headers = list[tuple[bytes, bytes]]
"""A request's headers as the protocol read them: names in lower case, in order."""
_PATH = PATH.encode("ascii")
_JSON = b"application/json"
_LINKED = int(TransferFlags.LINKED)


class Reply(Protocol):
    """Where a taken request's answer goes (the protocol's, one per request)."""

    def respond(self, response: Response) -> None:
        """Write ``response`` (in the event loop, once)."""

    def scope(self) -> Scope:
        """The request's ASGI scope, as the app would have seen it (made only for a refusal)."""


class DirectTransfers:
    """Takes plain ``POST /v1/transfers`` requests from the HTTP protocol (see the module)."""

    def __init__(
        self, services: Services, route: LeanRoute, exception_handlers: Mapping[Any, ExceptionHandler]
    ) -> None:
        if services.transfers is None:
            raise TypeError("the direct lane needs the transfer coalescer")
        self._services = services
        self._coalescer = services.transfers
        self._validate = route.validate_body
        self._roles = route.roles
        self._exception_handlers = exception_handlers
        self._body_bytes_max = min(BODY_BYTES_MAX, services.settings.body_bytes_max)
        self._rendering: set[asyncio.Task[None]] = set()
        self.taken = 0
        self.declined = 0

    def wants(self, method: bytes, url: bytes, headers: Headers) -> bool:
        """Whether a request may be taken, from its head alone: ``POST`` to the path itself, and
        a declared body the lane can hold (no chunks, no ``Expect``)."""
        if method != b"POST" or url != _PATH:
            return False
        length = -1
        for name, value in headers:
            if name == b"content-length":
                if length >= 0 or not value.isdigit():
                    return False
                length = int(value)
            elif name == b"transfer-encoding" or name == b"expect":
                return False
        return 0 < length <= self._body_bytes_max

    def take(self, headers: Headers, body: bytes, reply: Reply) -> bool:
        """Take the request (``reply`` then gets its answer, once, in the loop) or decline it,
        having changed nothing. The protocol offers only requests the lane ``wants``."""
        request = self._request(headers, body)
        if request is None:
            self.declined += 1
            return False
        self.taken += 1
        self._coalescer.submit(request, partial(self._answer, request, reply))
        return True

    def _request(self, headers: Headers, body: bytes) -> TransferRequest | None:
        """The transfer to submit if the route would take the request as it is (its rate-limit
        token then spent), else None."""
        if len(self._rendering) >= ERRORS_RENDERING_MAX:
            return None
        content_type: bytes | None = None
        authorization: bytes | None = None
        for name, value in headers:
            if name == b"content-type":
                if content_type is not None:
                    return None
                content_type = value
            elif name == b"authorization":
                if authorization is not None:
                    return None
                authorization = value
        if content_type != _JSON or authorization is None:
            return None
        key = bearer_key(authorization.decode("latin-1"))
        services = self._services
        principal = None if key is None else services.authenticator.known(key)
        if principal is None or principal.role not in self._roles:
            return None
        try:
            received = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
        plain = plain_transfer(received)
        if plain is not None:  # what the model and ``to_request`` make of a plain transfer
            request = TransferRequest(*plain)
        else:
            value, errors = self._validate(received)
            if errors:
                return None
            try:
                request = to_request(value)
            except (ApiError, MalformedRequest):
                return None
            if request.flags & _LINKED:
                return None
        try:
            services.rate_limiter.check(principal.key_id, services.settings.rate_limit(principal.role))
        except RateLimited:
            return None
        return request

    def _answer(
        self,
        request: TransferRequest,
        reply: Reply,
        outcome: TransferOutcome | None,
        error: BaseException | None,
    ) -> None:
        if error is None and outcome is not None:
            try:
                response = transfer_response(request, outcome)
            except Exception as refusal:  # rendered below, as the route's would be
                error = refusal
            else:
                reply.respond(response)
                return
        if not isinstance(error, Exception):  # a BaseException (cancelled, exiting): no answer
            return
        task = asyncio.get_running_loop().create_task(self._render(error, reply))
        self._rendering.add(task)
        task.add_done_callback(self._rendering.discard)

    async def _render(self, error: Exception, reply: Reply) -> None:
        reply.respond(await render_exception(self._exception_handlers, Request(reply.scope()), error))


def direct_transfers(services: Services, exception_handlers: Mapping[Any, ExceptionHandler]) -> DirectTransfers | None:
    """The lane for the app's ``POST /v1/transfers`` route, if it is a lean route."""
    for route in services.routes:
        if isinstance(route, LeanRoute) and route.path == PATH and route.methods == {"POST"}:
            return DirectTransfers(services, route, exception_handlers)
    return None
