"""Refuse request bodies over a size limit with 413, before they are read whole."""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from micropay.api.errors import error_response
from micropay.errors import BodyTooLarge


def _too_large(body_bytes_max: int) -> BodyTooLarge:
    return BodyTooLarge("body_too_large", f"The request body is over the limit of {body_bytes_max} bytes.")


class BodyLimitMiddleware:
    """ASGI middleware: a declared ``Content-Length`` over ``body_bytes_max`` is refused at once;
    a streamed body is counted as it arrives and refused when it crosses the limit.

    The streamed case raises Starlette's HTTPException (413), the one exception FastAPI lets
    through its body reading unchanged; the error handlers render it in the error shape.
    """

    def __init__(self, app: ASGIApp, body_bytes_max: int) -> None:
        self.app = app
        self.body_bytes_max = body_bytes_max

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.body_bytes_max
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > limit:
                    response = error_response(_too_large(limit))
                    response.headers["Connection"] = "close"
                    await response(scope, receive, send)
                    return
                break
        received_bytes = 0

        async def counting_receive() -> Message:
            nonlocal received_bytes
            message = await receive()
            if message["type"] == "http.request":
                received_bytes += len(message.get("body", b""))
                if received_bytes > limit:
                    raise HTTPException(413, f"The request body is over the limit of {limit} bytes.")
            return message

        await self.app(scope, counting_receive, send)
