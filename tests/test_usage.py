"""Honest usage: tokens as the upstream reported them, or estimated and marked so; daily budgets."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.db import transaction
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from hypothesis import given
from hypothesis import strategies as st

from chat import store
from chat.models import Conversation, DailyUsage, Message, Owner
from chat.sweep import sweep_once
from chat.usage import Usage, estimate_tokens
from tests.conftest import Connect, database_examples, rebuild
from tests.fake_upstream import FakeUpstream, completion, hanging, stream

pytestmark = pytest.mark.django_db(transaction=True)


async def test_a_stopped_answer_without_a_usage_chunk_stores_an_estimate_marked_as_such(
    connect: Connect, fake_upstream: FakeUpstream, user: Any
) -> None:
    fake_upstream.script(hanging("Twelve chars", " and more."))
    chat = await connect(user)
    answer = await chat.start_answer("How many tokens?")
    await chat.receive_text("Twelve chars and more.")

    await chat.stop(answer)
    done = (await chat.receive_until("done"))[-1]

    text = "Twelve chars and more."
    assert done["usage"]["estimated"] is True
    assert done["usage"]["completion_tokens"] == estimate_tokens(text) == 6
    assert done["usage"]["prompt_tokens"] > estimate_tokens("How many tokens?")
    stored = await Message.objects.aget(pk=answer)
    assert stored.usage_estimated
    assert (stored.completion_tokens, stored.total_tokens) == (6, done["usage"]["total_tokens"])


async def test_each_users_tokens_add_up_by_day(
    connect: Connect, fake_upstream: FakeUpstream, user: Any, other_user: Any
) -> None:
    fake_upstream.script(
        stream(*completion(["one"], usage=(10, 2))), stream(*completion(["two"], usage=(20, 3)))
    )
    chat = await connect(user)
    await chat.send("first")
    await chat.receive_until("done")
    await chat.send("second")
    await chat.receive_until("done")

    day = await DailyUsage.objects.aget(user=user, day=timezone.localdate())
    assert (day.answers, day.prompt_tokens, day.completion_tokens) == (2, 30, 5)
    assert day.estimated_tokens == 0
    assert not await DailyUsage.objects.filter(user=other_user).aexists()


async def test_a_turn_past_the_daily_budget_is_refused_before_it_starts(
    connect: Connect, fake_upstream: FakeUpstream, user: Any, settings: Any
) -> None:
    settings.CHAT_DAILY_TOKEN_BUDGET = 100
    await DailyUsage.objects.acreate(
        owner_key=f"user:{user.pk}", user=user, day=timezone.localdate(), prompt_tokens=100
    )
    chat = await connect(user)

    await chat.send("one more?")

    error = await chat.receive()
    assert (error["type"], error["code"]) == ("error", "budget_exhausted")
    assert not await Message.objects.aexists()
    assert fake_upstream.requests == []


async def test_an_answer_is_cut_off_cleanly_when_the_budget_runs_out(
    connect: Connect, fake_upstream: FakeUpstream, user: Any, settings: Any
) -> None:
    settings.CHAT_DAILY_TOKEN_BUDGET = 40
    fake_upstream.script(stream(*completion(["word " * 10] * 100)))  # ~250 tokens, would go on
    chat = await connect(user)

    await chat.send("Talk forever")
    frames = await chat.receive_until("done")

    done = frames[-1]
    assert (done["status"], done["error"]["code"]) == ("stopped", "budget_exhausted")
    assert "budget" in done["error"]["detail"]
    text = rebuild(frames)
    assert 0 < len(text) < len("word " * 10 * 100)
    stored = await Message.objects.aget(pk=done["message"])
    assert (stored.status, stored.content) == ("stopped", text)
    await fake_upstream.wait_idle()  # the upstream response was closed


async def test_an_interrupted_answer_gets_an_estimate_too(user: Any, settings: Any) -> None:
    settings.CHAT_ORPHAN_AFTER = 30
    conversation = await Conversation.objects.acreate(owner=user)
    question = await Message.objects.acreate(
        conversation=conversation, role="user", content="q" * 40
    )
    orphan = await Message.objects.acreate(
        conversation=conversation,
        parent=question,
        role="assistant",
        status="streaming",
        content="a" * 20,
    )
    await Message.objects.filter(pk=orphan.pk).aupdate(
        updated_at=timezone.now() - timedelta(seconds=60)
    )

    assert await sweep_once() == 1

    stored = await Message.objects.aget(pk=orphan.pk)
    assert (stored.status, stored.usage_estimated) == ("interrupted", True)
    assert (stored.prompt_tokens, stored.completion_tokens) == (10 + 4 + 2, 5)
    day = await DailyUsage.objects.aget(user=user)
    assert day.estimated_tokens == stored.total_tokens


def test_staff_see_each_users_daily_usage_and_running_total(
    admin_client: Client, user: Any
) -> None:
    today = timezone.localdate()
    for days_ago, tokens in ((1, 1000), (0, 234)):
        DailyUsage.objects.create(
            owner_key=f"user:{user.pk}",
            user=user,
            day=today - timedelta(days=days_ago),
            prompt_tokens=tokens,
        )
    response = admin_client.get(reverse("admin:chat_dailyusage_changelist"))
    rows = {row.day: row.running_total for row in response.context["cl"].result_list}
    assert rows == {today - timedelta(days=1): 1000, today: 1234}
    assert "alice" in response.content.decode()


UPSERTS = store.UPSERTS  # as the module has it (the test switches it off and on)
USAGES = st.lists(
    st.tuples(
        st.sampled_from(["user", "session"]),  # whose
        st.integers(0, 5_000),  # prompt tokens
        st.integers(0, 5_000),  # completion tokens
        st.booleans(),  # estimated
        st.integers(0, 1),  # answers (0: a title's tokens)
    ),
    max_size=12,
)


@pytest.mark.django_db(transaction=False)
@database_examples(30)
@given(usages=USAGES)
def test_the_days_totals_are_the_sum_of_what_was_recorded_in_one_statement_or_not(
    usages: list[tuple[str, int, int, bool, int]], user: Any, monkeypatch: Any
) -> None:
    """The one-statement upsert (PostgreSQL, SQLite) and the portable UPDATE-then-INSERT
    keep the same rows: each owner's day, adding up every answer and title."""
    owners = {"user": Owner(user_id=user.pk), "session": Owner(user_id=None, session_key="s-1")}

    def totals() -> dict[str, tuple[int, int, int, int, int | None]]:
        rows = DailyUsage.objects.filter(day=timezone.localdate())
        return {
            r.owner_key: (
                r.prompt_tokens,
                r.completion_tokens,
                r.estimated_tokens,
                r.answers,
                r.user_id,
            )
            for r in rows
        }

    found = []
    for upserts in (UPSERTS, ()):
        monkeypatch.setattr(store, "UPSERTS", upserts)
        with transaction.atomic():
            for whose, prompt, completion, estimated, answers in usages:
                usage = Usage(prompt, completion, estimated=estimated)
                store.record_usage(owners[whose].key, usage, answers=answers)
            found.append(totals())
            transaction.set_rollback(True)
    expected: dict[str, list[int]] = {}
    for whose, prompt, completion, estimated, answers in usages:
        row = expected.setdefault(owners[whose].key, [0, 0, 0, 0])
        row[0] += prompt
        row[1] += completion
        row[2] += prompt + completion if estimated else 0
        row[3] += answers
    user_ids = {owners["user"].key: user.pk, owners["session"].key: None}
    assert found[0] == found[1] == {key: (*row, user_ids[key]) for key, row in expected.items()}
