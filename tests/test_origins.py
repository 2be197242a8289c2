"""Which pages may open the socket: the site's own origin (scheme, host and port) and the
origins Django's CSRF check trusts, nothing else (chat.origins.SameOriginValidator)."""

from __future__ import annotations

from typing import Any

import pytest
from channels.testing import WebsocketCommunicator

from chat.origins import origin_allowed, site_origin
from project.asgi import application
from tests.conftest import Connect


def scope(
    host: str | None = "127.0.0.1:8000",
    *,
    scheme: str = "ws",
    forwarded_proto: str | None = None,
) -> dict[str, Any]:
    """A websocket scope as daphne builds it for a request with these headers."""
    headers = []
    if host is not None:
        headers.append((b"host", host.encode()))
    if forwarded_proto is not None:
        headers.append((b"x-forwarded-proto", forwarded_proto.encode()))
    return {"type": "websocket", "scheme": scheme, "headers": headers}


@pytest.fixture(autouse=True)
def site_settings(settings: Any) -> None:
    settings.DEBUG = False
    settings.ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]", "example.com", ".example.org"]
    settings.CSRF_TRUSTED_ORIGINS = []


@pytest.mark.parametrize(
    ("origin", "request_scope"),
    [
        pytest.param("http://127.0.0.1:8000", scope(), id="same-origin"),
        pytest.param("http://LOCALHOST:8000", scope("localhost:8000"), id="hostname-any-case"),
        pytest.param("http://[::1]:8000", scope("[::1]:8000"), id="ipv6-literal"),
        pytest.param("https://example.com", scope("example.com:443", scheme="wss"), id="https-443"),
        pytest.param("http://example.com:80", scope("example.com"), id="http-80"),
        pytest.param("https://example.com", scope("example.com", scheme="wss"), id="wss-site"),
        pytest.param(
            "https://example.com",
            scope("example.com", forwarded_proto="https"),
            id="x-forwarded-proto-https",
        ),
        pytest.param(
            "https://example.com",
            scope("example.com", forwarded_proto="https, http"),
            id="x-forwarded-proto-first-value",
        ),
        pytest.param("http://a.example.org", scope("a.example.org"), id="allowed-subdomain"),
    ],
)
def test_the_sites_own_origin_is_accepted(origin: str, request_scope: dict[str, Any]) -> None:
    assert origin_allowed(origin, request_scope)


@pytest.mark.parametrize(
    ("origin", "request_scope"),
    [
        pytest.param("http://localhost:31337", scope("127.0.0.1:8000"), id="another-host-and-port"),
        pytest.param("http://127.0.0.1:31337", scope("127.0.0.1:8000"), id="another-port"),
        pytest.param("http://127.0.0.1", scope("127.0.0.1:8000"), id="default-port-vs-8000"),
        pytest.param("https://127.0.0.1:8000", scope("127.0.0.1:8000"), id="https-page-http-site"),
        pytest.param("http://example.com", scope("example.com", scheme="wss"), id="http-page-wss"),
        pytest.param(
            "http://example.com",
            scope("example.com", forwarded_proto="https"),
            id="x-forwarded-proto-https-http-page",
        ),
        pytest.param(
            "https://example.com",
            scope("example.com", scheme="wss", forwarded_proto="http"),
            id="x-forwarded-proto-wins-over-scope",
        ),
        pytest.param("http://localhost:8000", scope("localhost:8000.evil"), id="bad-host-header"),
        pytest.param("http://evil.test:8000", scope("evil.test:8000"), id="host-not-allowed"),
        pytest.param("http://127.0.0.1:8000", scope(None), id="no-host-header"),
        pytest.param(None, scope(), id="no-origin-header"),
        pytest.param("null", scope(), id="null-origin"),
        pytest.param("", scope(), id="empty-origin"),
        pytest.param("file://", scope(), id="file-origin"),
        pytest.param("http://127.0.0.1:8000/chat/", scope(), id="origin-with-path"),
        pytest.param("http://user@127.0.0.1:8000", scope(), id="origin-with-userinfo"),
        pytest.param("http://[::1]:8000", scope("127.0.0.1:8000"), id="ipv6-vs-ipv4"),
    ],
)
def test_any_other_origin_is_refused(origin: str | None, request_scope: dict[str, Any]) -> None:
    assert not origin_allowed(origin, request_scope)


def test_the_site_origin_is_normalized_from_host_and_scheme() -> None:
    assert site_origin(scope("LocalHost:8000")) == "http://localhost:8000"
    assert site_origin(scope("example.com:443", scheme="wss")) == "https://example.com"
    assert site_origin(scope("[::1]:8000")) == "http://[::1]:8000"
    assert site_origin(scope("evil.test")) is None


def test_a_debug_site_with_no_allowed_hosts_allows_djangos_local_hosts(settings: Any) -> None:
    settings.DEBUG = True
    settings.ALLOWED_HOSTS = []
    assert origin_allowed("http://app.localhost:8000", scope("app.localhost:8000"))
    assert origin_allowed("http://[::1]:8000", scope("[::1]:8000"))
    assert not origin_allowed("http://example.com", scope("example.com"))


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        pytest.param("https://app.example.net", True, id="exact"),
        pytest.param("http://app.example.net", False, id="exact-other-scheme"),
        pytest.param("https://app.example.net:8443", False, id="exact-other-port"),
        pytest.param("https://a.example.io", True, id="wildcard-subdomain"),
        pytest.param("https://a.b.example.io", True, id="wildcard-deep-subdomain"),
        pytest.param("https://example.io", True, id="wildcard-bare-domain"),
        pytest.param("http://a.example.io", False, id="wildcard-other-scheme"),
        pytest.param("https://a.example.io:8443", False, id="wildcard-other-port"),
        pytest.param("https://evilexample.io", False, id="wildcard-not-a-suffix-match"),
    ],
)
def test_csrf_trusted_origins_are_accepted_as_django_matches_them(
    settings: Any, origin: str, allowed: bool
) -> None:
    settings.CSRF_TRUSTED_ORIGINS = ["https://app.example.net", "https://*.example.io"]
    assert origin_allowed(origin, scope("example.com", scheme="wss")) is allowed


def test_a_trusted_origin_still_needs_an_allowed_host(settings: Any) -> None:
    settings.CSRF_TRUSTED_ORIGINS = ["https://app.example.net"]
    assert not origin_allowed("https://app.example.net", scope("evil.test", scheme="wss"))


# End to end: the project's ASGI application, as a browser's socket reaches it.


async def open_socket(headers: list[tuple[bytes, bytes]]) -> bool:
    communicator = WebsocketCommunicator(application, "/ws/chat/", headers=headers)
    connected, _ = await communicator.connect(timeout=5)
    await communicator.disconnect()
    return bool(connected)


@pytest.mark.django_db(transaction=True)
async def test_a_page_of_the_site_opens_a_logged_in_socket(connect: Connect, user: Any) -> None:
    await connect(user, origin=b"http://localhost")


@pytest.mark.django_db(transaction=True)
async def test_a_page_on_another_port_of_a_local_host_is_refused(
    connect: Connect, user: Any
) -> None:
    await connect(user, origin=b"http://localhost:31337", expect_accept=False)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "headers",
    [
        pytest.param(
            [(b"host", b"127.0.0.1:8000"), (b"origin", b"http://localhost:31337")],
            id="reported-case-another-port",
        ),
        pytest.param(
            [(b"host", b"127.0.0.1:8000"), (b"origin", b"https://127.0.0.1:8000")],
            id="another-scheme",
        ),
        pytest.param([(b"host", b"127.0.0.1:8000")], id="no-origin"),
        pytest.param([(b"host", b"127.0.0.1:8000"), (b"origin", b"null")], id="null-origin"),
        pytest.param(
            [(b"host", b"evil.test:8000"), (b"origin", b"http://evil.test:8000")],
            id="host-not-allowed",
        ),
    ],
)
async def test_the_application_refuses_other_origins(headers: list[tuple[bytes, bytes]]) -> None:
    assert not await open_socket(headers)


@pytest.mark.django_db(transaction=True)
async def test_the_application_accepts_a_trusted_origin(settings: Any) -> None:
    settings.CSRF_TRUSTED_ORIGINS = ["https://*.example.io"]
    behind_https_proxy = [(b"host", b"example.com"), (b"x-forwarded-proto", b"https")]
    assert await open_socket([*behind_https_proxy, (b"origin", b"https://chat.example.io")])
    assert not await open_socket([*behind_https_proxy, (b"origin", b"http://chat.example.io")])
