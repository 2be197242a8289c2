"""The chat client (chat/static/chat/client.js) in a real browser, and the examples built on it.

The library tests run it on a page of the site (the embed example's, logged
in: the socket takes only pages of the site's origin), importing it as any
page would. An init script records the page's sockets, so that a test can
close one as a network would.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import expect, fake_model, log_in, start_site
from tests.fake_upstream import FakeUpstream, gated
from tests.servers import ROOT, Site

CLIENT = """
window.sockets = [];
const Native = window.WebSocket;
window.WebSocket = function (url, protocols) {
  const socket = new Native(url, protocols);
  window.sockets.push(socket);
  return socket;
};
Object.assign(window.WebSocket, Native);

// A client of the test's own, its socket open; what it says goes to window.log.
window.openChat = async () => {
  const { connectChat } = await import("/static/chat/client.js");
  const chat = connectChat();
  const log = { opens: 0, histories: 0, closes: [], errors: [] };
  chat.on("open", () => { log.opens += 1; });
  chat.on("history", () => { log.histories += 1; });
  chat.on("close", (e) => log.closes.push({ code: e.code, reconnect: e.reconnect }));
  chat.on("error", (e) => log.errors.push(e.code));
  await new Promise((resolve) => { const off = chat.on("open", () => { off(); resolve(); }); });
  Object.assign(window, { chat, log, socket: window.sockets[window.sockets.length - 1] });
};

// Every event of an answer, as its async iterator yields them.
window.record = (answer) => {
  const events = [];
  (async () => {
    for await (const e of answer) {
      events.push({ type: e.type, index: e.index, text: e.text, code: e.code, status: e.status });
    }
  })();
  return events;
};
"""


#: A socket of the test's own in place of the browser's: it records what the client sends
#: (``sent``) and hands it frames (``push``), with helpers to make them.
FAKE_SOCKET = """
window.fakes = [];
window.FakeSocket = class extends EventTarget {
  constructor(url) {
    super();
    this.url = url;
    this.readyState = 0;
    this.sent = [];
    window.fakes.push(this);
    setTimeout(() => { this.readyState = 1; this.dispatchEvent(new Event("open")); });
  }
  send(data) { this.sent.push(JSON.parse(data)); }
  close(code = 1000) {
    this.readyState = 3;
    this.dispatchEvent(new CloseEvent("close", { code }));
  }
  push(...frames) {
    for (const frame of frames) {
      const data = typeof frame === "string" ? frame : JSON.stringify(frame);
      this.dispatchEvent(new MessageEvent("message", { data }));
    }
  }
};
const usage = { prompt_tokens: null, completion_tokens: null, total_tokens: null, estimated: true };
window.make = {
  conversation: { id: "c1", title: "", model: "m", created_at: "", updated_at: "" },
  message: (id, role, content, parent, status = "streaming") => ({
    id, conversation: "c1", parent, versions: [id], role, content, reasoning: "", refusal: "",
    status, finish_reason: null, error: null, usage, model: "m", created_at: "", html: "",
    rendered: 0,
  }),
  delta: (index, text) => ({ type: "delta", message: "a1", index, text }),
  done: (length, status = "complete") => ({
    type: "done", message: "a1", conversation: "c1", status, length, finish_reason: "stop",
    usage, error: null, html: "", refusal: "",
  }),
};

// A client on a fake socket, asked "Hi", its answer (a1, to q1) started.
window.startAnswer = async () => {
  const { connectChat } = await import("/static/chat/client.js");
  window.WebSocket = window.FakeSocket;
  const chat = connectChat();
  await new Promise((resolve) => chat.on("open", resolve));
  const socket = window.fakes[window.fakes.length - 1];
  const answer = chat.send("Hi");
  const events = record(answer);
  socket.push(
    { type: "conversation", conversation: make.conversation },
    { type: "message", message: make.message("q1", "user", "Hi", null) },
    { type: "message", message: make.message("a1", "assistant", "", "q1") },
  );
  Object.assign(window, { chat, socket, answer, events });
};
"""


def page_errors(page: Any) -> list[str]:
    """Uncaught errors of the page's scripts, from now on."""
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    return errors


@pytest.fixture
async def client(page: Any, site: Site) -> Any:
    """A logged-in page of the site with a client of the test's own (``window.chat``)."""
    await page.add_init_script(CLIENT)
    await log_in(page, site)
    await page.goto(site.url + "/examples/embed/")
    await page.evaluate("window.openChat()")
    return page


@pytest.fixture
async def fake_socket(page: Any, site: Site) -> Any:
    """A page of the site (no login needed: the socket is the test's) with FAKE_SOCKET."""
    await page.add_init_script(CLIENT)
    await page.add_init_script(FAKE_SOCKET)
    await page.goto(site.url + "/accounts/login/")
    await page.evaluate("startAnswer()")
    return page


@pytest.fixture
def upstream_site(fake_upstream: FakeUpstream, tmp_path: Path) -> Iterator[Site]:
    # No title request: it would take a scripted reply.
    yield from start_site(tmp_path, **fake_model(fake_upstream), CHAT_AUTO_TITLE="0")


# ---- the examples -------------------------------------------------------------


async def test_the_embed_example_streams_an_answer_and_shows_it(chat: Any, site: Site) -> None:
    errors = page_errors(chat)
    await chat.goto(site.url + "/examples/embed/")
    await chat.fill("input[name=question]", "Hello from a Django template")
    await chat.press("input[name=question]", "Enter")
    status, answer = chat.locator("#status"), chat.locator("#answer")
    await expect(status).to_have_text("streaming")
    await expect(status).to_have_text("complete", timeout=15_000)
    await expect(answer.locator("blockquote")).to_contain_text("Hello from a Django template")
    await expect(answer.locator("pre code span.hl-k").first).to_be_visible()  # highlighted
    await expect(answer.locator(".tail")).to_have_text("")  # all of it is HTML now
    assert not errors


async def test_the_react_example_streams_an_answer(chat: Any, site: Site) -> None:
    errors = page_errors(chat)
    await chat.goto(site.url + "/examples/react/")
    await expect(chat.locator("#connection")).to_have_text("Connected")
    await chat.get_by_role("textbox", name="Message").fill("Hello from React")
    await chat.get_by_role("textbox", name="Message").press("Enter")
    answer = chat.locator("article.answer").last
    await expect(answer).to_have_attribute("data-status", "streaming")
    await expect(chat.get_by_role("button", name="Stop")).to_be_visible()
    await expect(answer).to_have_attribute("data-status", "complete", timeout=15_000)
    await expect(chat.locator("p.question")).to_have_text(["Hello from React"])
    await expect(answer.locator("blockquote")).to_contain_text("Hello from React")
    await expect(answer.locator("pre code span.hl-k").first).to_be_visible()
    await expect(chat.get_by_role("button", name="Send")).to_be_visible()
    assert not errors


def test_the_docs_and_the_readme_show_the_embed_example_as_it_is_served() -> None:
    template = (ROOT / "project/templates/examples/embed.html").read_text()
    body = template.split("<body>")[1].split("</body>")[0]
    docs = (ROOT / "docs/client.md").read_text()
    snippet = re.search(r"```html\n(.*?)```", docs, re.DOTALL)
    assert snippet is not None

    def lines(html: str) -> list[str]:
        return [line.strip() for line in html.splitlines() if line.strip()]

    assert lines(snippet[1]) == ["{% load static %}", *lines(body)]
    readme = (ROOT / "README.md").read_text().split("## Use the stream in your own pages")[1]
    in_readme = re.search(r"```html\n(.*?)```", readme, re.DOTALL)
    assert in_readme is not None and lines(in_readme[1]) == lines(snippet[1])


async def test_the_examples_are_for_logged_in_users(page: Any, site: Site) -> None:
    for example in ("embed", "react"):
        await page.goto(f"{site.url}/examples/{example}/")
        await expect(page).to_have_url(re.compile(r"/accounts/login/"))


# ---- the library ------------------------------------------------------------


async def test_a_reconnect_mid_answer_shows_the_exact_text_once(
    page: Any, upstream_site: Site, fake_upstream: FakeUpstream
) -> None:
    away, end = asyncio.Event(), asyncio.Event()
    # "While away. " is written while no socket watches.
    fake_upstream.script(gated("Before the drop. ", away, "While away. ", end, "After it."))
    await page.add_init_script(CLIENT)
    await log_in(page, upstream_site)
    await page.goto(upstream_site.url + "/examples/embed/")
    await page.evaluate("window.openChat()")
    await page.evaluate("window.answer = chat.send('Tell me across a drop')")
    await page.evaluate("window.events = record(answer)")
    await page.wait_for_function("answer.text === 'Before the drop. '")

    await page.evaluate("socket.close(4000)")  # the connection drops mid-answer
    await page.wait_for_function("log.closes.length === 1")
    away.set()
    await page.wait_for_function("log.histories === 1")  # reconnected, and watching again
    end.set()
    await page.wait_for_function("answer.ended", timeout=15_000)

    result = await page.evaluate("({ text: answer.text, status: answer.status, log, events })")
    assert [close["reconnect"] for close in result["log"]["closes"]] == [True]
    assert result["status"] == "complete"
    assert result["text"] == "Before the drop. While away. After it."
    deltas = [(e["index"], e["text"]) for e in result["events"] if e["type"] == "delta"]
    # Each piece once, in its place, whether it came live or with the history.
    assert deltas == [(0, "Before the drop. "), (17, "While away. "), (29, "After it.")]
    assert [e["type"] for e in result["events"] if e["type"] != "delta"] == ["html", "done"]


async def test_refused_turns_end_with_typed_errors(client: Any) -> None:
    result = await client.evaluate(
        """async (elsewhere) => {
          const blank = await chat.send("   ").finished;
          const missing = await chat.send("Anyone?", { conversation: elsewhere }).finished;
          return { blank: [blank.status, blank.error], missing: [missing.status, missing.error],
                   errors: log.errors, conversation: chat.conversation };
        }""",
        str(uuid.uuid4()),
    )
    assert result["blank"] == [
        "refused",
        {"code": "empty_content", "detail": "The message is empty."},
    ]
    assert result["missing"][0] == "refused" and result["missing"][1]["code"] == "not_found"
    assert result["errors"] == ["empty_content", "not_found"]
    assert result["conversation"] is None  # a refused turn moves nothing


async def test_an_answer_stopped_before_it_starts_is_stopped_once_it_does(client: Any) -> None:
    result = await client.evaluate(
        """async () => {
          const answer = chat.send("Stop me at once");
          const queued = answer.stop();  // its id is not known yet
          await answer.finished;
          return { queued, status: answer.status, id: answer.id, shown: chat.messages.length };
        }"""
    )
    assert result["queued"] is True
    assert result["status"] == "stopped"
    assert result["id"] is not None and result["shown"] == 2  # its question and itself


async def test_a_logout_stops_the_client_and_ends_its_answer(client: Any, site: Site) -> None:
    await client.evaluate("window.answer = chat.send('A long answer, please')")
    await client.wait_for_function("answer.text.length > 10")
    other = await client.context.new_page()  # the same session, in another tab
    await other.goto(site.url + "/chat/")
    await other.locator("#log-out").click()

    await client.wait_for_function("answer.ended")
    result = await client.evaluate(
        "({ log, error: answer.error, later: chat.send('Still there?').error })"
    )
    assert result["log"]["closes"] == [{"code": 4401, "reconnect": False}]
    assert result["error"]["code"] == "not_authenticated"
    # The server's word, then the answer it ended; then a turn that could not be sent.
    assert result["log"]["errors"] == ["not_authenticated", "not_authenticated", "not_connected"]
    assert result["later"]["code"] == "not_connected"


async def test_overlapping_text_is_trimmed_and_a_gap_asks_for_the_history_once(
    fake_socket: Any,
) -> None:
    result = await fake_socket.evaluate(
        """() => {
          socket.push(make.delta(0, "Hel"), make.delta(1, "ello"));  // "ell" it has already
          socket.push(make.delta(9, "x"), make.delta(10, "y"));  // text before them is missing
          return { text: answer.text, sent: socket.sent.map((f) => f.type) };
        }"""
    )
    assert result == {"text": "Hello", "sent": ["send", "watch"]}
    events = await fake_socket.evaluate("events")
    assert [(e["index"], e["text"]) for e in events] == [(0, "Hel"), (3, "lo")]


async def test_parts_are_joined_and_a_ping_between_them_is_echoed_at_once(
    fake_socket: Any,
) -> None:
    result = await fake_socket.evaluate(
        """async () => {
          socket.push(make.delta(0, "Hello"));
          const history = JSON.stringify({
            type: "history", conversation: make.conversation,
            messages: [make.message("q1", "user", "Hi", null),
                       make.message("a1", "assistant", "Hello, world", "q1")],
          });
          socket.push({ type: "part", last: false, data: history.slice(0, 50) });
          socket.push({ type: "ping", nonce: "n1" });
          const echoed = socket.sent[socket.sent.length - 1];
          socket.push({ type: "part", last: true, data: history.slice(50) });
          socket.push({ ...make.done(12), html: "<p>Hello, world</p>" });
          await answer.finished;
          return { echoed, text: answer.text, html: answer.html, tail: answer.tail,
                   status: answer.status, shown: chat.messages.map((m) => m.content) };
        }"""
    )
    assert result["echoed"] == {"type": "pong", "nonce": "n1"}
    assert result["text"] == "Hello, world" and result["status"] == "complete"
    assert (result["html"], result["tail"]) == ("<p>Hello, world</p>", "")
    assert result["shown"] == ["Hi", "Hello, world"]
    events = await fake_socket.evaluate("events")
    assert [(e["type"], e["text"]) for e in events] == [
        ("delta", "Hello"),
        ("delta", ", world"),  # the history's text, after what the answer had
        ("done", None),
    ]


async def test_an_answer_the_server_kept_less_of_is_reset_from_the_history(
    fake_socket: Any,
) -> None:
    # Its process was killed: the answer ends with the text last saved, shorter than shown.
    result = await fake_socket.evaluate(
        """async () => {
          socket.push(make.delta(0, "Hello"), make.done(3, "interrupted"));
          const ended = answer.ended;
          socket.push({
            type: "history", conversation: make.conversation,
            messages: [make.message("q1", "user", "Hi", null),
                       make.message("a1", "assistant", "Hel", "q1", "interrupted")],
          });
          await answer.finished;
          return { ended, sent: socket.sent.map((f) => f.type), text: answer.text,
                   status: answer.status };
        }"""
    )
    assert result == {
        "ended": False,  # not on a done that disagrees with its text
        "sent": ["send", "watch"],
        "text": "Hel",
        "status": "interrupted",
    }
    events = await fake_socket.evaluate("events")
    assert [e["type"] for e in events] == ["delta", "reset", "done"]


async def test_a_deploy_reconnects_at_once_and_watches_again(fake_socket: Any) -> None:
    result = await fake_socket.evaluate(
        """async () => {
          const closed = new Promise((resolve) => chat.on("close", resolve));
          socket.close(4503);
          const close = await closed;
          await new Promise((resolve) => chat.on("open", resolve));
          return { close: [close.code, close.reconnect, close.delay < 600],
                   sent: fakes[fakes.length - 1].sent };
        }"""
    )
    assert result["close"] == [4503, True, True]
    assert result["sent"] == [{"type": "watch", "conversation": "c1"}]


async def test_a_user_not_allowed_to_chat_is_not_reconnected(fake_socket: Any) -> None:
    # The project's CHAT_PERMISSIONS said no (docs/extending.md): trying again cannot help.
    result = await fake_socket.evaluate(
        """async () => {
          const closed = new Promise((resolve) => chat.on("close", resolve));
          socket.push({ type: "error", code: "forbidden", detail: "You are not allowed." });
          socket.close(4403);
          const close = await closed;
          await answer.finished;
          return { close: [close.code, close.reconnect], error: answer.error.code,
                   sockets: fakes.length };
        }"""
    )
    assert result == {"close": [4403, False], "error": "forbidden", "sockets": 1}
