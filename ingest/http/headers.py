"""Security headers on what a browser renders: the try-it page (`/`, `/ui/*`) and the API
docs (`/docs` and its assets). Every answer says `nosniff`; the pages also may not be
framed (clickjacking) and may load nothing from anywhere but this gateway. The page's images
are the user's own photos, shown from `blob:` URLs."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
NOSNIFF = (b"x-content-type-options", b"nosniff")
_PAGE_EXTRA = [(b"x-frame-options", b"DENY"), (b"referrer-policy", b"no-referrer")]


def _is_docs(path: str) -> bool:
    return path == "/docs" or path.startswith("/docs/")


class SecurityHeaders:
    """A plain ASGI wrapper (no per-request objects beyond the header list it extends)."""

    def __init__(self, app: ASGIApp, docs_csp: str) -> None:
        self.app = app
        self.page = [(b"content-security-policy", PAGE_CSP.encode()), *_PAGE_EXTRA]
        self.docs = [(b"content-security-policy", docs_csp.encode()), *_PAGE_EXTRA]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if path == "/" or path.startswith("/ui/"):
            extra = [NOSNIFF, *self.page]
        elif _is_docs(path):
            extra = [NOSNIFF, *self.docs]
        else:
            extra = [NOSNIFF]

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, with_headers)
