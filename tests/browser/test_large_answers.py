"""Long code answers reach the page whole, and so do histories full of them.

daphne refuses to send a websocket message over 1 MiB. The ``done`` frame of a
~200,000-character code answer carries the answer's whole highlighted HTML, and
the ``history`` of a conversation of such answers carries all of them: both are
far over that. Before ``part`` frames daphne refused them, and the page was
left with an answer "Writing…" for ever or an empty conversation. Here the page
joins the parts: a person sees every answer finished, its code exactly as
written, after a reload too, and the socket stays open.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import ask, expect, fake_model, last_answer, log_in, playwright_api
from tests.fake_upstream import FakeUpstream, completion, stream
from tests.servers import USER, Site, daphne, manage, prepare_site

ANSWER_CHARS = 200_000
#: Answers in the long conversation: 19 stored, the 20th asked in the page.
ANSWERS = 20
VERSIONS = ".chat-versions span"


def program(chars: int, seed: int = 0) -> str:
    """About ``chars`` characters of Python, with quotes, backslashes and non-ASCII text."""
    lines = []
    size = 0
    n = 0
    while size < chars:
        line = f'value_{seed}_{n} = compute({n}, "text \\"{n}\\"", [{n}, {n + 1}])  # é → ✓'
        lines.append(line)
        size += len(line) + 1
        n += 1
    return "\n".join(lines) + "\n"


def code_answer(code: str) -> str:
    """A Markdown answer that is nearly all one fenced Python block of ``code``."""
    return f"Here is the program:\n\n```python\n{code}```\n"


def pieces(text: str, size: int = 4000) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def environment(tmp_path: Path, fake_upstream: FakeUpstream) -> dict[str, str]:
    """A fresh site on the fake upstream; a large send window keeps pings rare."""
    return prepare_site(
        tmp_path,
        **fake_model(fake_upstream),
        CHAT_SEND_WINDOW="1048576",
        CHAT_TURNS_PER_MINUTE="100",  # the stored turns are all of this minute
        CHAT_AUTO_TITLE="0",  # no title request takes a scripted reply
    )


@pytest.fixture
def large_site(fake_upstream: FakeUpstream, tmp_path: Path) -> Iterator[Site]:
    with daphne(environment(tmp_path, fake_upstream)) as site:
        yield site


SEED = """
import json, os
from django.contrib.auth.models import User
from chat.models import Conversation, Message

seed = json.loads(open(os.environ["CHAT_TEST_SEED"], encoding="utf-8").read())
conversation = Conversation.objects.create(
    id=seed["id"], owner=User.objects.get(username=seed["user"]), title="Long programs",
    model="fake-model",
)
parent = None
for question, answer in seed["turns"]:
    parent = Message.objects.create(
        conversation=conversation, parent=parent, role="user", content=question
    )
    parent = Message.objects.create(
        conversation=conversation, parent=parent, role="assistant", status="complete",
        content=answer, finish_reason="stop", model="fake-model",
    )
conversation.current_leaf = parent
conversation.save()
"""


def seed_conversation(env: dict[str, str], tmp_path: Path, turns: list[tuple[str, str]]) -> str:
    """Store a conversation of finished ``turns`` for ``USER`` in the site's database.

    The site is another process with its own SQLite file: its own ``manage.py
    shell`` writes the rows, reading them from a file. Returns the conversation's id.
    """
    conversation = str(uuid.uuid4())
    data = tmp_path / "seed.json"
    data.write_text(json.dumps({"id": conversation, "user": USER, "turns": turns}), "utf-8")
    manage({**env, "CHAT_TEST_SEED": str(data)}, "shell", "-c", SEED)
    return conversation


@pytest.fixture
def long_conversation(fake_upstream: FakeUpstream, tmp_path: Path) -> Iterator[tuple[Site, str]]:
    """A site whose user has a conversation of ``ANSWERS - 1`` long code answers."""
    env = environment(tmp_path, fake_upstream)
    turns = [
        (f"Program {n}?", code_answer(program(ANSWER_CHARS, seed=n))) for n in range(ANSWERS - 1)
    ]
    conversation = seed_conversation(env, tmp_path, turns)
    with daphne(env) as site:
        yield site, conversation


async def shown_code(answer: Any) -> str:
    """The text of the answer's one code block (strict: exactly one), as the page holds it.

    ``textContent``, not ``innerText``: messages off screen are not rendered
    (``content-visibility: auto``), and ``innerText`` of those is empty.
    """
    text: str = await answer.locator("pre").text_content() or ""
    return text


#: Records the duration of every main-thread task over 50 ms.
LONG_TASKS = """
window.longTasks = [0];
new PerformanceObserver((list) => {
  for (const entry of list.getEntries()) window.longTasks.push(entry.duration);
}).observe({ type: "longtask", buffered: true });
"""

#: Counts the page's socket closes (it marks the body ``data-connected=false``).
CLOSES = """
window.socketCloses = 0;
new MutationObserver(() => {
  if (document.body.dataset.connected === "false") window.socketCloses += 1;
}).observe(document, { subtree: true, attributeFilter: ["data-connected"] });
"""


async def connected(page: Any) -> None:
    """The socket is open and never closed since the page loaded (no reconnect hid a failure)."""
    await expect(page.locator("body[data-connected=true]")).to_be_attached()
    assert await page.evaluate("window.socketCloses") == 0


SETTLED = """({answers, id, notId}) => {
  const shown = document.querySelectorAll(".chat-assistant");
  const last = shown[shown.length - 1];
  return shown.length === answers && last.classList.contains("chat-complete")
    && (id === null || last.dataset.id === id) && (notId === null || last.dataset.id !== notId);
}"""


async def settled(
    page: Any,
    answers: int,
    *,
    id: str | None = None,
    not_id: str | None = None,
    timeout: float = 90_000,
) -> None:
    """Wait until the page shows ``answers`` answers, the last one complete (and ``id``).

    Polled with the DOM's own ``querySelectorAll``: Playwright's locators walk
    every element of the page (for shadow roots), about 0.6 s a query once ~20
    long highlighted answers are shown, and polling them would slow the page
    under test. ``expect`` checks what is shown once this has passed. A failure
    says what the page shows instead, in a line (not 200,000 characters of it).
    """
    try:
        await page.wait_for_function(
            SETTLED,
            arg={"answers": answers, "id": id, "notId": not_id},
            polling=250,
            timeout=timeout,
        )
    except playwright_api.TimeoutError:
        shown = await page.evaluate(SHOWN)
        pytest.fail(f"expected {answers} answers, the last complete; the page shows {shown}")


SHOWN = """() => ({
  answers: Array.from(document.querySelectorAll(".chat-assistant"), (a) => a.className),
  connected: document.body.dataset.connected,
  socketCloses: window.socketCloses,
  notice: document.getElementById("connection")?.textContent,
})"""


def lap(started: float, what: str) -> float:
    now = time.monotonic()
    print(f"{what}: {now - started:.1f} s")
    return now


async def test_a_200000_character_code_answer_streams_and_survives_a_reload(
    page: Any, large_site: Site, fake_upstream: FakeUpstream
) -> None:
    code = program(ANSWER_CHARS)
    fake_upstream.script(stream(*completion(pieces(code_answer(code)))))
    await page.add_init_script(CLOSES)
    chat = await log_in(page, large_site)

    await ask(chat, "Write a long program")
    await settled(chat, 1, timeout=30_000)
    answer = last_answer(chat)
    assert await shown_code(answer) == code
    await expect(answer.locator("pre code span.hl-s2").first).to_be_visible()  # highlighted
    await connected(chat)

    # The history that brings it back is itself over a MiB: it comes in parts too.
    await chat.reload()
    await expect(chat.locator(".chat-user .chat-body")).to_have_text(["Write a long program"])
    await settled(chat, 1, timeout=30_000)
    assert await shown_code(last_answer(chat)) == code
    await connected(chat)


async def test_a_conversation_of_20_long_answers_reopens_and_switches_versions(
    page: Any, long_conversation: tuple[Site, str], fake_upstream: FakeUpstream
) -> None:
    site, conversation = long_conversation
    first = program(ANSWER_CHARS, seed=ANSWERS)
    second = program(ANSWER_CHARS, seed=ANSWERS + 1)
    fake_upstream.script(
        stream(*completion(pieces(code_answer(first)))),
        stream(*completion(pieces(code_answer(second)))),
    )
    await page.add_init_script(CLOSES)
    await page.add_init_script(LONG_TASKS)
    chat = await log_in(page, site)
    answers = chat.locator(".chat-assistant")
    started = time.monotonic()
    await chat.goto(f"{site.url}/chat/c/{conversation}/")
    await settled(chat, ANSWERS - 1)
    await expect(answers).to_have_count(ANSWERS - 1)
    assert await shown_code(answers.first) == program(ANSWER_CHARS, seed=0)
    assert await shown_code(answers.last) == program(ANSWER_CHARS, seed=ANSWERS - 2)
    await connected(chat)
    started = lap(started, f"{ANSWERS - 1} answers shown")

    await ask(chat, "One more long program")
    await settled(chat, ANSWERS)
    first_version = await last_answer(chat).get_attribute("data-id")
    assert await shown_code(last_answer(chat)) == first
    started = lap(started, f"answer {ANSWERS} streamed")

    await last_answer(chat).get_by_role("button", name="Answer this again").click()
    await settled(chat, ANSWERS, not_id=first_version)
    await expect(last_answer(chat).locator(VERSIONS)).to_have_text("2/2")
    assert await shown_code(last_answer(chat)) == second
    started = lap(started, "regenerated")

    # Back to the first version: the page shows the whole conversation again, from a history.
    await last_answer(chat).get_by_role("button", name="Previous version").click()
    await settled(chat, ANSWERS, id=first_version)
    await expect(last_answer(chat).locator(VERSIONS)).to_have_text("1/2")
    await expect(answers).to_have_count(ANSWERS)
    assert await shown_code(last_answer(chat)) == first
    await connected(chat)
    # Measured, not asserted (bench/RESULTS.md has the figures): the longest task.
    print(f"longest main-thread task: {max(await chat.evaluate('window.longTasks')):.0f} ms")
    lap(started, "switched back")
