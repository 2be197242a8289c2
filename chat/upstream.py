"""The OpenAI-compatible streaming request, its error mapping, and chunk interpretation.

``stream_answer`` posts to ``{base_url}/chat/completions`` with ``stream: true``
and yields, once per network read, the answer text and reasoning text that
read added; everything else the chunks carry (finish reason, usage, refusal,
tool calls) is collected on the ``Answer`` passed in. Failures raise the
``UpstreamError`` subclasses of ``chat.exceptions``.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
import weakref
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
from django.utils import timezone

from chat import network
from chat.conf import DEFAULT_BASE_URL, conf
from chat.exceptions import (
    UpstreamAuthError,
    UpstreamDisconnected,
    UpstreamError,
    UpstreamNotFound,
    UpstreamProtocolError,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamStreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
    UpstreamUnreachable,
)
from chat.sse import SSEDecoder, SSEError
from chat.text import redact, redact_all, storable

logger = logging.getLogger(__name__)

ERROR_BODY_LIMIT = 64 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class UpstreamConfig:
    """Everything one request needs, read from settings once per answer."""

    base_url: str
    api_key: str
    model: str
    connect_timeout: float = 10.0
    first_byte_timeout: float = 30.0
    read_timeout: float = 60.0
    max_retries: int = 2
    retry_backoff: float = 0.5
    max_retry_after: float = 10.0
    max_event_size: int = 4 * 1024 * 1024
    headers: Mapping[str, str] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def secrets(self) -> tuple[str, ...]:
        """What upstream text must never carry to a user, a log or the database."""
        password = urlsplit(self.base_url).password  # https://user:secret@host/v1
        return (self.api_key, *self.headers.values(), *([password] if password else []))

    @classmethod
    def from_settings(cls, *, base_url: str | None = None) -> UpstreamConfig:
        """Build from ``chat.conf``; ``base_url`` overrides it (the demo model's own URL)."""
        return cls(
            base_url=(base_url or conf.OPENAI_BASE_URL or DEFAULT_BASE_URL).rstrip("/"),
            api_key=conf.OPENAI_API_KEY,
            model=conf.CHAT_MODEL,
            connect_timeout=conf.CHAT_CONNECT_TIMEOUT,
            first_byte_timeout=conf.CHAT_FIRST_BYTE_TIMEOUT,
            read_timeout=conf.CHAT_READ_TIMEOUT,
            max_retries=conf.CHAT_MAX_RETRIES,
            retry_backoff=conf.CHAT_RETRY_BACKOFF,
            max_retry_after=conf.CHAT_MAX_RETRY_AFTER,
            max_event_size=conf.CHAT_MAX_EVENT_BYTES,
            headers=conf.CHAT_UPSTREAM_HEADERS,
            options=conf.CHAT_COMPLETION_OPTIONS,
        )


@dataclass(slots=True)
class Answer:
    """What the chunks of one answer said, besides the text deltas yielded as they come."""

    model: str = ""
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    refusal: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    request_id: str = ""
    done: bool = False  # the [DONE] sentinel arrived
    #: How the answer ran, for the admin's timeline: (wall clock, event, details).
    events: list[tuple[datetime, str, dict[str, Any]]] = field(default_factory=list)

    def note(self, event: str, **details: Any) -> None:
        self.events.append((timezone.now(), event, details))

    @property
    def accepted(self) -> bool:
        """Whether the upstream took the request: it answered with a stream (so may bill)."""
        return any(event == "response" for _, event, _ in self.events)

    def scrub(self, secrets: tuple[str, ...]) -> None:
        """Redact what the upstream said besides the text (``chat.text``), before it is kept."""
        self.model = redact_all(self.model, secrets)
        self.finish_reason = redact_all(self.finish_reason, secrets)
        self.refusal = redact_all(self.refusal, secrets)
        self.request_id = redact_all(self.request_id, secrets)
        self.tool_calls = redact_all(self.tool_calls, secrets)
        self.events = [(at, name, redact_all(said, secrets)) for at, name, said in self.events]

    def apply(self, payload: object) -> tuple[str, str]:
        """Interpret one ``chat.completion.chunk``; return the (content, reasoning) it adds."""
        if not isinstance(payload, dict):
            raise UpstreamProtocolError("The model server sent a chunk that is not a JSON object.")
        error = payload.get("error")
        if error:
            raise UpstreamStreamError(
                _error_message(error) or "The model server reported an error."
            )
        if model := payload.get("model"):
            self.model = str(model)
        usage = payload.get("usage")
        if isinstance(usage, dict):
            self.prompt_tokens = _int_or_none(usage.get("prompt_tokens"))
            self.completion_tokens = _int_or_none(usage.get("completion_tokens"))
        # The usage chunk (stream_options.include_usage) and Azure's content-filter
        # chunks have an empty ``choices`` list; only choice 0 is asked for (n=1).
        choices = payload.get("choices")
        if not choices or not isinstance(choices, list):
            return "", ""
        choice = choices[0]
        if not isinstance(choice, dict):
            raise UpstreamProtocolError("The model server sent a malformed choice.")
        if reason := choice.get("finish_reason"):
            self.finish_reason = str(reason)
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            return "", ""
        content = delta.get("content")
        # DeepSeek, vLLM and llama.cpp say reasoning_content; OpenRouter says reasoning.
        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
        if refusal := delta.get("refusal"):
            self.refusal += str(refusal)
        if tool_calls := delta.get("tool_calls"):
            self._merge_tool_calls(tool_calls)
        return (
            content if isinstance(content, str) else "",
            reasoning if isinstance(reasoning, str) else "",
        )

    def _merge_tool_calls(self, deltas: object) -> None:
        # Tool calls stream as fragments keyed by "index"; arguments arrive in pieces.
        if not isinstance(deltas, list):
            return
        for part in deltas:
            if not isinstance(part, dict):
                continue
            index = part.get("index", 0)
            index = index if isinstance(index, int) and 0 <= index < 128 else 0
            while len(self.tool_calls) <= index:
                self.tool_calls.append({"id": "", "type": "function", "name": "", "arguments": ""})
            call = self.tool_calls[index]
            if part.get("id"):
                call["id"] = str(part["id"])
            function = part.get("function")
            if isinstance(function, dict):
                if function.get("name"):
                    call["name"] += str(function["name"])
                if function.get("arguments"):
                    call["arguments"] += str(function["arguments"])


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _error_message(error: object) -> str:
    if isinstance(error, dict):
        return str(error.get("message") or error.get("code") or error.get("type") or "")
    return str(error)


# One pooled client per event loop: connections are reused across answers, and
# a client must never be used from a loop other than the one it was made on.
_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
    weakref.WeakKeyDictionary()
)


def get_client() -> httpx.AsyncClient:
    """Return this event loop's shared client, creating it on first use."""
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None or client.is_closed:
        ca_bundle = conf.CHAT_UPSTREAM_CA_BUNDLE
        context = ssl.create_default_context(cafile=ca_bundle) if ca_bundle else None
        transport: httpx.AsyncBaseTransport
        if conf.CHAT_UPSTREAM_PROXY:
            # Through a proxy, httpx's own transport (it speaks CONNECT); no cap on
            # connections: each answer holds one for its whole life.
            transport = httpx.AsyncHTTPTransport(
                proxy=conf.CHAT_UPSTREAM_PROXY,
                verify=context or True,
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=100),
            )
        else:
            transport = network.Transport(ssl_context=context)
        client = httpx.AsyncClient(transport=transport, follow_redirects=False)
        _clients[loop] = client
    return client


async def aclose_client() -> None:
    """Close this event loop's client, if any (on shutdown, and between tests)."""
    client = _clients.pop(asyncio.get_running_loop(), None)
    if client is not None:
        await client.aclose()


COMPLETION_BODY_LIMIT = 64 * 1024  # a title's completion is a few hundred bytes
EXPECTED = {
    "text/event-stream": "an event stream ('text/event-stream')",
    "application/json": "JSON ('application/json')",
}


def request_body(config: UpstreamConfig, messages: Sequence[Mapping[str, str]]) -> dict[str, Any]:
    return {
        **config.options,
        "model": config.model,
        "messages": list(messages),
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def stream_answer(
    config: UpstreamConfig, messages: Sequence[Mapping[str, str]], answer: Answer
) -> AsyncIterator[tuple[str, str]]:
    """Yield ``(content, reasoning)`` added by each network read of the streamed answer.

    Retries (with exponential backoff) happen only while opening the request,
    that is before any token, and only for connect errors, 429 and 5xx.
    Closing this generator (or cancelling its consumer) closes the upstream
    response, and with it the connection: the upstream stops generating.

    One generator from the network read to its caller, the read interpreted by a
    plain function (``_interpret``): each generator a read passes through is a
    resume and a yield per token (three of them before, ``python -m bench.costs``).
    """
    try:
        response = await _open_stream(config, messages, answer)
        try:
            answer.request_id = response.headers.get("x-request-id", "")
            answer.note("response", status=response.status_code, request_id=answer.request_id)
            decoder = SSEDecoder(max_event_size=config.max_event_size)
            # A server (or a proxy before it) may compress anyway: then httpx decodes.
            encoding = response.headers.get("content-encoding", "identity").strip().lower()
            chunks = response.aiter_raw() if encoding == "identity" else response.aiter_bytes()
            with _failing_as(STREAMING, encoding=encoding, read_timeout=config.read_timeout):
                async for chunk in chunks:
                    # What a read completed before a failure is still the answer's: it
                    # is yielded first, then the failure raised.
                    content, reasoning, failure = _interpret(decoder, chunk, answer)
                    if content or reasoning:
                        yield content, reasoning
                    if failure is not None:
                        raise failure
                    if answer.done:
                        return
            if answer.finish_reason is None:
                raise UpstreamDisconnected(
                    "The model server ended the stream before the answer was finished."
                )
        finally:
            await response.aclose()
    except UpstreamError as error:
        # Whatever the upstream said, redacted before anyone sees it.
        raise error.redacted(config.secrets) from error.__cause__


async def _open_stream(
    config: UpstreamConfig, messages: Sequence[Mapping[str, str]], answer: Answer
) -> httpx.Response:
    """The answer's streamed response, once the upstream started it (retried as above)."""
    client = get_client()
    headers = _headers(config, accept="text/event-stream")
    # Compressing a token stream only delays it (a compressor buffers): ask for none.
    if not any(name.lower() == "accept-encoding" for name in headers):
        headers["Accept-Encoding"] = "identity"
    timeout = httpx.Timeout(
        connect=config.connect_timeout,
        read=config.read_timeout,
        write=config.read_timeout,
        pool=None,
    )
    request = client.build_request(
        "POST",
        f"{config.base_url}/chat/completions",
        content=orjson.dumps(request_body(config, messages)),
        headers=headers,
        timeout=timeout,
    )
    # One deadline for the response to start, however many tries it takes:
    # an upstream that never answers fails the turn after it, not after
    # ``max_retries + 1`` read timeouts.
    deadline = asyncio.get_running_loop().time() + config.first_byte_timeout
    attempt = 0
    while True:
        answer.note("request_sent", attempt=attempt + 1, url=request.url.path)
        try:
            async with asyncio.timeout_at(deadline):
                return await _open(client, request, config)
        except TimeoutError:
            raise UpstreamTimeout(
                f"The model server did not start answering within {config.first_byte_timeout:g} s."
            ) from None
        except UpstreamError as error:
            delay = _retry_delay(error, attempt, config)
            if delay is None or asyncio.get_running_loop().time() + delay >= deadline:
                raise
            attempt += 1
            answer.note("retry", after=error.code, delay=round(delay, 3))
            logger.info("Retrying the upstream in %.2fs after %s", delay, error.code)
            await asyncio.sleep(delay)


def _retry_delay(error: UpstreamError, attempt: int, config: UpstreamConfig) -> float | None:
    if not error.retryable or attempt >= config.max_retries:
        return None
    delay: float = config.retry_backoff * (2**attempt)
    if isinstance(error, UpstreamRateLimited) and error.retry_after is not None:
        if error.retry_after > config.max_retry_after:
            return None
        delay = max(delay, error.retry_after)
    return delay


def _headers(config: UpstreamConfig, *, accept: str) -> dict[str, str]:
    """A request's headers: ``CHAT_UPSTREAM_HEADERS`` may replace ``Accept``, not the rest."""
    headers = {"Accept": accept, **config.headers, "Content-Type": "application/json"}
    if config.api_key:
        headers["Authorization"] = f"Bearer {config.api_key}"
    return headers


async def complete(
    config: UpstreamConfig, messages: Sequence[Mapping[str, str]], *, max_tokens: int
) -> tuple[str, tuple[int | None, int | None]]:
    """One short, non-streaming completion (a title); return its text and reported usage.

    Not retried: its callers can do without the answer. The caller bounds the time.
    """
    try:
        text, reported = await _complete(config, messages, max_tokens=max_tokens)
    except UpstreamError as error:
        raise error.redacted(config.secrets) from error.__cause__
    return storable(redact(text, config.secrets)), reported


async def _complete(
    config: UpstreamConfig, messages: Sequence[Mapping[str, str]], *, max_tokens: int
) -> tuple[str, tuple[int | None, int | None]]:
    headers = _headers(config, accept="application/json")
    body = {"model": config.model, "messages": list(messages), "max_tokens": max_tokens}
    client = get_client()
    request = client.build_request(
        "POST",
        f"{config.base_url}/chat/completions",
        content=orjson.dumps(body),
        headers=headers,
        timeout=httpx.Timeout(config.read_timeout, connect=config.connect_timeout),
    )
    response = await _open(client, request, config, expect="application/json")
    try:
        raw = b""
        async for part in response.aiter_bytes():
            raw += part
            if len(raw) > COMPLETION_BODY_LIMIT:
                raise UpstreamProtocolError("The model server sent an oversized completion.")
    except httpx.HTTPError as exc:
        raise UpstreamDisconnected("The model server broke off its completion.") from exc
    finally:
        await response.aclose()
    try:
        data = orjson.loads(raw)
        text = data["choices"][0]["message"]["content"]
        usage = data.get("usage") or {}
    except (orjson.JSONDecodeError, LookupError, TypeError) as exc:
        raise UpstreamProtocolError(
            "The model server sent a completion of the wrong shape."
        ) from exc
    if not isinstance(text, str) or not isinstance(usage, dict):
        raise UpstreamProtocolError("The model server sent a completion of the wrong shape.")
    reported = (
        _int_or_none(usage.get("prompt_tokens")),
        _int_or_none(usage.get("completion_tokens")),
    )
    return text, reported


#: What httpx's errors mean to the person chatting: the first row whose classes match
#: names the chat error, raised with its detail (``str.format``-ed with the call's values).
Failures = tuple[
    tuple[type[httpx.HTTPError] | tuple[type[httpx.HTTPError], ...], type[UpstreamError], str],
    ...,
]
#: While the request is sent and the response head awaited: nothing was answered.
SENDING: Failures = (
    (
        httpx.TimeoutException,
        UpstreamUnreachable,
        "The model server at {url} did not answer in time.",
    ),
    (
        (httpx.ConnectError, httpx.UnsupportedProtocol),
        UpstreamUnreachable,
        "Could not connect to the model server at {url}.",
    ),
    (
        (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError),
        UpstreamUnreachable,
        "The model server at {url} closed the connection without answering.",
    ),
)
#: While the answer streams: what came before the failure is kept.
STREAMING: Failures = (
    (
        httpx.DecodingError,
        UpstreamProtocolError,
        "The model server sent a {encoding}-encoded stream that could not be decoded.",
    ),
    (
        httpx.TimeoutException,
        UpstreamTimeout,
        "The model server sent nothing for {read_timeout:g} s; the answer was cut off.",
    ),
    (
        (httpx.RemoteProtocolError, httpx.ReadError),
        UpstreamDisconnected,
        "The connection to the model server broke before the answer was finished.",
    ),
)


@contextmanager
def _failing_as(failures: Failures, **values: object) -> Iterator[None]:
    """Raise the chat error ``failures`` names for an httpx error, from it; others pass."""
    try:
        yield
    except httpx.HTTPError as exc:
        for kinds, error, detail in failures:
            if isinstance(exc, kinds):
                raise error(detail.format(**values)) from exc
        raise


async def _open(
    client: httpx.AsyncClient,
    request: httpx.Request,
    config: UpstreamConfig,
    *,
    expect: str = "text/event-stream",
) -> httpx.Response:
    with _failing_as(SENDING, url=config.base_url):
        response = await client.send(request, stream=True)
    if response.status_code != 200:
        try:
            raise await _status_error(response, config)
        finally:
            await response.aclose()
    content_type = response.headers.get("content-type", "")
    if not content_type.startswith(expect):
        await response.aclose()
        raise UpstreamProtocolError(
            f"The model server answered with {content_type or 'no content type'!r} "
            f"instead of {EXPECTED[expect]}."
        )
    return response


async def _status_error(response: httpx.Response, config: UpstreamConfig) -> UpstreamError:
    status = response.status_code
    body = b""
    try:
        async for part in response.aiter_raw():
            body += part
            if len(body) >= ERROR_BODY_LIMIT:
                break
    except httpx.HTTPError as exc:
        # The status alone is enough to report; a broken error body adds nothing.
        logger.debug("Could not read the upstream's HTTP %s error body: %r", status, exc)
    # Redacted whole, before any part of it is cut out to be shown.
    text = redact(body[:ERROR_BODY_LIMIT].decode("utf-8", "replace"), config.secrets)
    said = _describe_body(text, response.headers.get("content-type", ""))
    suffix = f" It said: {said}" if said else ""
    if status in (401, 403):
        return UpstreamAuthError(
            f"The model server rejected the API key (HTTP {status}).{suffix}", status_code=status
        )
    if status == 404:
        return UpstreamNotFound(
            f"The model server does not know the model {config.model!r} (HTTP 404).{suffix}",
            status_code=status,
        )
    if status == 429:
        retry_after = _retry_after(response.headers.get("retry-after"))
        wait = f" Try again in {retry_after:.0f} s." if retry_after is not None else ""
        return UpstreamRateLimited(
            f"The model server is rate limiting requests (HTTP 429).{wait}{suffix}",
            retry_after=retry_after,
        )
    if status >= 500:
        return UpstreamUnavailable(
            f"The model server failed (HTTP {status}).{suffix}", status_code=status
        )
    return UpstreamRejected(
        f"The model server refused the request (HTTP {status}).{suffix}", status_code=status
    )


def _describe_body(body: str, content_type: str) -> str:
    if not body:
        return ""
    if "html" in content_type or body.lstrip()[:1] == "<":
        return "an HTML error page."
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:300].strip()
    if isinstance(parsed, dict) and parsed.get("error"):
        return _error_message(parsed["error"])[:500]
    return body[:300].strip()


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass  # not a number of seconds: an HTTP date, then
    try:
        moment: float = parsedate_to_datetime(value).timestamp()
        return max(0.0, moment - time.time())
    except (TypeError, ValueError):
        return None


_loads = orjson.loads  # looked up once, not per event


def _interpret(
    decoder: SSEDecoder, chunk: bytes, answer: Answer
) -> tuple[str, str, UpstreamError | None]:
    """What one network read adds to the answer: its content, its reasoning, and the
    failure it ended in (the events before the failure still count)."""
    failure: UpstreamError | None = None
    try:
        events = decoder.feed(chunk)
    except SSEError as exc:
        events = exc.events
        failure = UpstreamProtocolError(f"The model server sent an oversized event: {exc}.")
        failure.__cause__ = exc
    content: list[str] = []
    reasoning: list[str] = []
    for event in events:
        data = event.data
        if data == "[DONE]":
            answer.done = True
            break
        try:
            payload = _loads(data)
        except orjson.JSONDecodeError as exc:
            failure = UpstreamProtocolError("The model server sent a chunk that is not valid JSON.")
            failure.__cause__ = exc
            break
        try:
            if event.event == "error":
                raise UpstreamStreamError(
                    _error_message(payload.get("error", payload))
                    if isinstance(payload, dict)
                    else str(payload)
                )
            text, thought = answer.apply(payload)
        except UpstreamError as exc:
            failure = exc
            break
        if text:
            content.append(text)
        if thought:
            reasoning.append(thought)
    if not content and not reasoning:
        return "", "", failure
    # Per read, not per event: a NUL is rare, and looking for one is one C scan.
    return storable("".join(content)), storable("".join(reasoning)), failure
