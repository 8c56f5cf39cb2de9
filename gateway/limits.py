"""Refuse oversized bodies before anything parses them.

A declared Content-Length over the limit is answered 413 at once; a body streamed without one
is counted as it arrives and cut off at the limit (the route's body read raises
``PayloadTooLarge``, answered 413 by the error handlers). Starlette has no body limit of its own.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import PayloadTooLarge, error_response


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self._declared_length(scope) > self.max_bytes:
            error = PayloadTooLarge(self.max_bytes)
            response = error_response(
                413, "too_large", str(error), field="body", limit=f"at most {self.max_bytes} bytes"
            )
            await response(scope, receive, send)
            return
        await self.app(scope, self._counting(receive), send)

    def _declared_length(self, scope: Scope) -> int:
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    return int(value)
                except ValueError:
                    return 0
        return 0

    def _counting(self, receive: Receive) -> Receive:
        received = 0

        async def receive_within_limit() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise PayloadTooLarge(self.max_bytes)
            return message

        return receive_within_limit
