"""Which pages may open the chat socket: the site's own origin and ``CSRF_TRUSTED_ORIGINS``.

Browsers let any page open a websocket to any site, cookies included, and tell
the server only the page's ``Origin``. Channels' ``AllowedHostsOriginValidator``
compares just the Origin's host with ``ALLOWED_HOSTS``, so a page on another
port or scheme of an allowed host (``http://localhost:31337`` against a site on
``http://127.0.0.1:8000``) gets a logged-in socket. ``SameOriginValidator``
compares the whole origin (scheme, host and port) with the site's own, which it
reads from the request's ``Host`` and ``X-Forwarded-Proto`` headers, and else
accepts only the origins Django's CSRF check trusts (``CSRF_TRUSTED_ORIGINS``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.http.request import split_domain_port, validate_host
from django.utils.http import is_same_domain

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

DEFAULT_PORTS = {"http": 80, "https": 443}
# The websocket scheme in the ASGI scope, as the scheme of the page that opened it.
_SCOPE_SCHEMES = {"ws": "http", "wss": "https", "http": "http", "https": "https"}
# Django's default when DEBUG is on and ALLOWED_HOSTS is empty (HttpRequest.get_host).
_DEBUG_ALLOWED_HOSTS = [".localhost", "127.0.0.1", "[::1]"]


def header(scope: Scope, name: bytes) -> str | None:
    """The value of a header sent exactly once; ``None`` if missing or repeated (ambiguous)."""
    values = [value for key, value in scope.get("headers", ()) if key.lower() == name]
    if len(values) != 1:
        return None
    value: bytes = values[0]
    return value.decode("latin-1")


def normalize_origin(scheme: str, netloc: str) -> str | None:
    """``scheme://host[:port]`` lowercased, without a default port; ``None`` if not valid.

    Both the Origin and the site's origin go through here, so that
    ``https://Example.com:443`` and ``https://example.com`` compare equal.
    """
    scheme = scheme.lower()
    if scheme not in DEFAULT_PORTS:
        return None
    domain, port = split_domain_port(netloc)  # lowercased; brackets kept for IPv6
    if not domain:
        return None
    number = int(port) if port else DEFAULT_PORTS[scheme]
    if not 0 < number < 65536:
        return None
    if number == DEFAULT_PORTS[scheme]:
        return f"{scheme}://{domain}"
    return f"{scheme}://{domain}:{number}"


def parse_origin(origin: str) -> str | None:
    """An Origin header value, normalized; ``None`` for ``null`` or anything not an origin."""
    try:
        parts = urlsplit(origin)
    except ValueError:
        return None
    if parts.path or parts.query or parts.fragment or origin.endswith(("?", "#")):
        return None
    return normalize_origin(parts.scheme, parts.netloc)


def site_scheme(scope: Scope) -> str | None:
    """``http`` or ``https``: the proxy's ``X-Forwarded-Proto`` (first value), else the scope's."""
    forwarded = header(scope, b"x-forwarded-proto")
    if forwarded is not None:
        scheme = forwarded.split(",", 1)[0].strip().lower()
    else:
        scheme = str(scope.get("scheme", "ws")).lower()
    return _SCOPE_SCHEMES.get(scheme)


def allowed_hosts() -> list[str]:
    """``ALLOWED_HOSTS``, with Django's default for a DEBUG site that leaves it empty."""
    hosts: list[str] = list(settings.ALLOWED_HOSTS)
    if settings.DEBUG and not hosts:
        return list(_DEBUG_ALLOWED_HOSTS)
    return hosts


def site_origin(scope: Scope) -> str | None:
    """The origin the browser asked for (normalized), or ``None`` if its Host is not allowed.

    The Host is checked against ``ALLOWED_HOSTS`` as Django checks it for HTTP
    requests, so a forged Host cannot make any origin "the site's own".
    """
    host = header(scope, b"host")
    scheme = site_scheme(scope)
    if host is None or scheme is None:
        return None
    domain, _ = split_domain_port(host)
    if not domain or not validate_host(domain, allowed_hosts()):
        return None
    return normalize_origin(scheme, host)


def trusted_origin(origin: str, trusted: Iterable[str]) -> bool:
    """Whether ``origin`` is in ``trusted``, matched as Django's ``CsrfViewMiddleware`` does.

    An exact string match, or for an entry like ``https://*.example.com`` the
    same scheme and a netloc that is ``example.com`` or one of its subdomains.
    """
    trusted = list(trusted)
    if any(origin == entry for entry in trusted if "*" not in entry):
        return True
    try:
        parts = urlsplit(origin)
    except ValueError:
        return False
    return any(
        is_same_domain(parts.netloc, pattern.netloc.lstrip("*"))
        for pattern in (urlsplit(entry) for entry in trusted if "*" in entry)
        if pattern.scheme == parts.scheme
    )


def origin_allowed(origin: str | None, scope: Scope) -> bool:
    """Whether a page of ``origin`` may open this socket (``None``: no Origin header, refused).

    The request's Host must be allowed in any case; then the origin must be the
    site's own (scheme, host and port) or one of ``CSRF_TRUSTED_ORIGINS``.
    """
    if origin is None:
        return False
    site = site_origin(scope)
    if site is None:
        return False
    if parse_origin(origin) == site:
        return True
    return trusted_origin(origin, settings.CSRF_TRUSTED_ORIGINS)


class SameOriginValidator:
    """ASGI middleware: close websockets opened by pages of any other origin.

    Wrap the websocket application in it (instead of Channels'
    ``AllowedHostsOriginValidator``); a refused socket is closed before it is
    accepted, as Channels' ``OriginValidator`` closes it.
    """

    def __init__(self, application: ASGIApp) -> None:
        self.application = application

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            raise ValueError("SameOriginValidator only handles websocket connections")
        if origin_allowed(header(scope, b"origin"), scope):
            await self.application(scope, receive, send)
            return
        denier = WebsocketDenier()
        await denier(scope, receive, send)
