"""The direct lanes: single transfers and single charges answered without an ASGI task.

``POST /v1/transfers`` carries one small transfer and ``POST /v1/charges`` one small charge, and
on these hot paths the ASGI cycle (a task per request, the scope, the receive and send
coroutines, the header checks of each send) costs more than everything the request itself
needs. The HTTP protocol (``micropay.cli.protocol``) keeps the head of a request a lane
``wants`` and, once its body is in, offers it to that lane's ``take``, which either takes it
whole or declines it having changed nothing; a declined request goes through the ASGI app as any
other.

A lane takes only a request its lean route would accept as it is: the path alone (no query
string); exactly one ``Content-Type: application/json`` and one ``Authorization: Bearer``
header, with a key verified within the key cache's TTL (``Authenticator.known``) whose role the
route admits; a body that parses and validates exactly as the route validates it, and that the
route's own checks of the caller pass (a transfer: not ``linked``; a charge: the caller's own
merchant or payer); and a rate-limit token (spent last, so a declined request never spends
one). Everything else, every error the caller could have made, is answered by the app. Once
taken, the request goes to the same coalescer (transfers) or batcher (charges) as the route's,
and the answer is made by the same function as the route's (``transfer_response``,
``charge_response``), its refusals rendered by the app's own exception handlers: a lane answers
what its route answers, byte for byte.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import partial
from typing import Any, Generic, ParamSpec, Protocol, TypeVar

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Scope

from micropay.api.auth import bearer_key
from micropay.api.authenticator import Principal
from micropay.api.lean import ExceptionHandler, LeanRoute, render_exception
from micropay.api.payment_schemas import ChargeIn
from micropay.api.payment_views import may_see
from micropay.api.routes.charges import charge_response, to_charge_request
from micropay.api.routes.transfers import to_request, transfer_response
from micropay.api.schemas import plain_transfer
from micropay.api.services import Services
from micropay.api.settings import Role
from micropay.errors import ApiError, MalformedRequest, RateLimited
from micropay.ledger import TransferFlags, TransferOutcome, TransferRequest
from micropay.models.charge_batcher import Answer
from micropay.models.metadata import metadata_body
from micropay.models.payments import ChargeRequest

TRANSFERS_PATH = "/v1/transfers"
CHARGES_PATH = "/v1/charges"
BODY_BYTES_MAX = 16 * 1024
"""Largest body a lane takes (a single transfer or charge with full metadata is far smaller); a
larger one, or one without a Content-Length, goes through the app."""
ERRORS_RENDERING_MAX = 1024
"""Most refusals being rendered at once per lane (each a small task); past it the lane declines."""

Headers = list[tuple[bytes, bytes]]
"""A request's headers as the protocol read them: names in lower case, in order."""
_JSON = b"application/json"
_LINKED = int(TransferFlags.LINKED)

R = TypeVar("R")
P = ParamSpec("P")


class Reply(Protocol):
    """Where a taken request's answer goes (the protocol's, one per request)."""

    def respond(self, response: Response) -> None:
        """Write ``response`` (in the event loop, once)."""

    def scope(self) -> Scope:
        """The request's ASGI scope, as the app would have seen it (made only for a refusal)."""


class Lane(ABC, Generic[R]):
    """One lean ``POST`` route the protocol may answer itself: the checks every lane makes, in
    the route's order. A lane says what it makes of a body (``_prepare``) and where it goes
    (``_submit``)."""

    path = ""

    def __init__(
        self, services: Services, route: LeanRoute, exception_handlers: Mapping[Any, ExceptionHandler]
    ) -> None:
        self._services = services
        self._validate = route.validate_body
        self._roles: frozenset[Role] = route.roles
        self._exception_handlers = exception_handlers
        self._body_bytes_max = min(BODY_BYTES_MAX, services.settings.body_bytes_max)
        self._rendering: set[asyncio.Task[None]] = set()
        self.url = self.path.encode("ascii")
        self.taken = 0
        self.declined = 0

    def wants(self, headers: Headers) -> bool:
        """Whether a request for this lane's path may be taken, from its head alone: a declared
        body the lane can hold (no chunks, no ``Expect``)."""
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
        prepared = self._request(headers, body)
        if prepared is None:
            self.declined += 1
            return False
        self.taken += 1
        self._submit(prepared, reply)
        return True

    def _request(self, headers: Headers, body: bytes) -> R | None:
        """What to submit if the route would take the request as it is (its rate-limit token
        then spent), else None."""
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
        prepared = self._prepare(received, principal)
        if prepared is None:
            return None
        try:
            services.rate_limiter.check(principal.key_id, services.settings.rate_limit(principal.role))
        except RateLimited:
            return None
        return prepared

    @abstractmethod
    def _prepare(self, received: object, principal: Principal) -> R | None:
        """What the route would submit for this body and caller, or None where it would refuse."""

    @abstractmethod
    def _submit(self, prepared: R, reply: Reply) -> None:
        """Hand the request to the engine's side; ``reply`` gets its answer in the loop."""

    def _respond(self, reply: Reply, make_response: Callable[P, Response], *args: P.args, **kwargs: P.kwargs) -> None:
        """Answer with the route's own ``make_response(*args, **kwargs)``, or, if it raises the
        route's refusal, with that refusal as the app renders it."""
        try:
            response = make_response(*args, **kwargs)
        except Exception as refusal:
            self._fail(refusal, reply)
            return
        reply.respond(response)

    def _fail(self, error: BaseException, reply: Reply) -> None:
        """Answer a refusal as the app's exception handlers render it."""
        if not isinstance(error, Exception):  # a BaseException (cancelled, exiting): no answer
            return
        task = asyncio.get_running_loop().create_task(self._render(error, reply))
        self._rendering.add(task)
        task.add_done_callback(self._rendering.discard)

    async def _render(self, error: Exception, reply: Reply) -> None:
        reply.respond(await render_exception(self._exception_handlers, Request(reply.scope()), error))


class TransferLane(Lane[TransferRequest]):
    """``POST /v1/transfers``: one unlinked transfer, through the transfer coalescer."""

    path = TRANSFERS_PATH

    def __init__(
        self, services: Services, route: LeanRoute, exception_handlers: Mapping[Any, ExceptionHandler]
    ) -> None:
        super().__init__(services, route, exception_handlers)
        if services.transfers is None:
            raise TypeError("the transfer lane needs the transfer coalescer")
        self._coalescer = services.transfers

    def _prepare(self, received: object, principal: Principal) -> TransferRequest | None:
        plain = plain_transfer(received)
        if plain is not None:  # what the model and ``to_request`` make of a plain transfer
            return TransferRequest(*plain)
        value, errors = self._validate(received)
        if errors:
            return None
        try:
            request = to_request(value)
        except (ApiError, MalformedRequest):
            return None
        return None if request.flags & _LINKED else request

    def _submit(self, prepared: TransferRequest, reply: Reply) -> None:
        self._coalescer.submit(prepared, partial(self._answer, prepared, reply))

    def _answer(
        self, request: TransferRequest, reply: Reply, outcome: TransferOutcome | None, error: BaseException | None
    ) -> None:
        if error is None and outcome is not None:
            self._respond(reply, transfer_response, request, outcome)
        elif error is not None:
            self._fail(error, reply)


PreparedCharge = tuple[ChargeRequest, bytes | None, dict[str, str]]
"""A charge to make, its stored metadata, and the metadata as the answer shows it."""


class ChargeLane(Lane[PreparedCharge]):
    """``POST /v1/charges``: one charge by admin, its merchant or its payer, through the charge
    batcher."""

    path = CHARGES_PATH

    def __init__(
        self, services: Services, route: LeanRoute, exception_handlers: Mapping[Any, ExceptionHandler]
    ) -> None:
        super().__init__(services, route, exception_handlers)
        if services.charges is None:
            raise TypeError("the charge lane needs the charge batcher")
        self._batcher = services.charges

    def _prepare(self, received: object, principal: Principal) -> PreparedCharge | None:
        value, errors = self._validate(received)
        if errors or not isinstance(value, ChargeIn):
            return None
        if not may_see(principal, payer_id=value.payer_id, merchant_id=value.merchant_id):
            return None  # the route answers 404 for another merchant's or payer's charge
        return to_charge_request(value), metadata_body(value.metadata), value.metadata

    def _submit(self, prepared: PreparedCharge, reply: Reply) -> None:
        request, stored_metadata, metadata = prepared
        self._batcher.submit_in_loop(request, stored_metadata, partial(self._answer, metadata, reply))

    def _answer(self, metadata: dict[str, str], reply: Reply, answer: Answer) -> None:
        if isinstance(answer, BaseException):
            self._fail(answer, reply)
        else:
            self._respond(reply, charge_response, answer, metadata)


class DirectLanes:
    """The lanes of one app, found by the exact path of a ``POST``."""

    def __init__(self, lanes: Iterable[Lane[Any]]) -> None:
        self._by_url: dict[bytes, Lane[Any]] = {lane.url: lane for lane in lanes}

    def wants(self, method: bytes, url: bytes, headers: Headers) -> Lane[Any] | None:
        """The lane that may take this request (see ``Lane.wants``), if any."""
        if method != b"POST":
            return None
        lane = self._by_url.get(url)
        return lane if lane is not None and lane.wants(headers) else None

    def lane(self, path: str) -> Lane[Any]:
        return self._by_url[path.encode("ascii")]

    def __iter__(self) -> Iterator[Lane[Any]]:
        return iter(self._by_url.values())


_LANES: tuple[type[Lane[Any]], ...] = (TransferLane, ChargeLane)


def direct_lanes(services: Services, exception_handlers: Mapping[Any, ExceptionHandler]) -> DirectLanes | None:
    """The lanes for those of the app's routes that are lean ``POST`` routes, if any."""
    lanes: list[Lane[Any]] = []
    for lane_class in _LANES:
        for route in services.routes:
            if isinstance(route, LeanRoute) and route.path == lane_class.path and route.methods == {"POST"}:
                lanes.append(lane_class(services, route, exception_handlers))
                break
    return DirectLanes(lanes) if lanes else None
