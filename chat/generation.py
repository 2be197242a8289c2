"""One answer's life, apart from any socket: upstream events → store → frames to watchers.

A ``Generation`` is started by a consumer but owned by the process-wide
``registry``: it keeps running, checkpointing and publishing its frames to
whoever watches its conversation (``chat.fanout``), whoever stops watching.
Every delta frame carries ``index``, the position of its first character in
the whole answer (in code points), so watchers can drop what they already have.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import replace
from typing import Any

from chat import control, metrics, signals, store
from chat.conf import conf
from chat.exceptions import ChatError, RequestNotBuilt, ServerError, UpstreamError
from chat.fanout import Frame, hub
from chat.models import Owner
from chat.protocol import (
    STOPPED,
    ErrorInfo,
    FinalStatus,
    HtmlFrame,
    StopReason,
    done_frame,
    text_frame,
)
from chat.rendering import BlockSplitter, off_loop, render_block, render_markdown
from chat.requests import UpstreamRequest
from chat.text import redact
from chat.titles import give_title
from chat.upstream import Answer, UpstreamConfig, stream_answer
from chat.usage import Usage, estimate_prompt, estimate_tokens_of_length

logger = logging.getLogger(__name__)


class Generation:
    """Streams one assistant message from the upstream to everyone watching its conversation."""

    def __init__(
        self,
        *,
        message_id: uuid.UUID,
        conversation_id: uuid.UUID,
        owner_key: str,
        history: Sequence[Mapping[str, str]],
        config: UpstreamConfig,
        budget: int | None = None,
        title_after: bool = False,
        prepare: Callable[[], Awaitable[UpstreamRequest]] | None = None,
    ) -> None:
        self.message_id = message_id
        self.conversation_id = conversation_id
        self.owner_key = owner_key
        self.history = history
        self.question = history[-1]["content"] if history else ""
        #: Shapes the request before it is sent (``CHAT_REQUEST_BUILDER``: ``chat.requests``).
        self.prepare = prepare
        self.config = config
        self.title_after = title_after  # the first exchange: ask for a title once it ends
        # With a daily budget, the answer is cut off once prompt and text may exceed it.
        self.budget = budget
        self._prompt_estimate = estimate_prompt(history) if budget is not None else 0
        self.answer = Answer()
        self.length = 0  # code points of answer text so far
        self.stop_reason: StopReason | None = None
        self._id = str(message_id)
        self._parts: list[str] = []
        self._reasoning: list[str] = []
        self._reasoning_length = 0
        self._started = 0.0
        self._first_token: float | None = None
        self._pump: asyncio.Task[None] | None = None
        # Complete Markdown blocks are rendered in order, apart from the stream,
        # so a delta never waits for a render.
        self._splitter = BlockSplitter()
        self._blocks: asyncio.Queue[str | None] = asyncio.Queue()
        self._renderer: asyncio.Task[None] | None = None
        self._html: list[str] = []
        self.rendered = 0  # code points of the answer published as HTML
        self.saved = (0, 0)  # (answer, reasoning) lengths in the last checkpoint

    @property
    def text(self) -> str:
        """The answer so far, exactly as streamed."""
        if len(self._parts) > 1:
            self._parts[:] = ["".join(self._parts)]
        return self._parts[0] if self._parts else ""

    @property
    def reasoning(self) -> str:
        return "".join(self._reasoning)

    def stop(self, reason: StopReason = "user", *, by: str = "") -> None:
        """Close the upstream now; the partial answer is saved as ``stopped``.

        ``by`` names who, for the timeline (a staff member's username).
        """
        if self.stop_reason is not None:
            return
        self.answer.note("stop_requested", by=f"{reason}:{by}" if by else reason)
        if self._pump is None:  # not started yet: run() will not even open the request
            self.stop_reason = reason
        elif not self._pump.done():
            self.stop_reason = reason
            self._pump.cancel()

    async def run(self) -> None:
        """Stream the answer to the end, then store and announce how it ended."""
        self._started = time.monotonic()
        self.answer.note("started", model=self.config.model)
        if self.prepare is not None and self.stop_reason is None and not await self._prepare():
            return
        if self.stop_reason is not None:
            await self._finish("stopped", None)
            return
        self._pump = asyncio.create_task(self._stream())
        status: FinalStatus = "complete"
        error: ChatError | None = None
        try:
            await self._pump
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                # The process is shutting down: save what we have, then let it go.
                self._pump.cancel()
                await self._finish("interrupted", None)
                raise
            status = "stopped"
        except UpstreamError as exc:
            status, error = "failed", exc
        except Exception as exc:
            # The exception may say anything (an upstream's text, a path): the log
            # only, and even there without the secrets.
            trace = "".join(traceback.format_exception(exc))
            logger.error(
                "Generation of message %s crashed:\n%s",
                self.message_id,
                redact(trace, self.config.secrets),
            )
            status, error = (
                "failed",
                ServerError(
                    "The answer failed because of an error on the server; the text so far is kept."
                ),
            )
        if status != "complete":
            self.answer.note("upstream_closed")
        await self._finish(status, error)
        if self.title_after and conf.CHAT_AUTO_TITLE and status in ("complete", "stopped"):
            question = self.question
            title = give_title(
                self.conversation_id, self.owner_key, question, self.text, self.config
            )
            registry.spawn(title, name=f"chat-title-{self.conversation_id}")

    async def _stream(self) -> None:
        async for content, reasoning in stream_answer(self.config, self.history, self.answer):
            if content:
                if self._first_token is None:
                    self._first_token = time.monotonic()
                    self.answer.note("first_token")
                    metrics.FIRST_TOKEN.observe(self._first_token - self._started)
                metrics.CHARACTERS.inc(len(content))
                index = self.length
                self._parts.append(content)
                self.length += len(content)
                await self.publish(text_frame("delta", self._id, index, content))
                for block in self._splitter.feed(content):
                    self._render(block)
                if self.budget is not None and self._over_budget():
                    self.stop("budget")
            if reasoning:
                index = self._reasoning_length
                self._reasoning.append(reasoning)
                self._reasoning_length += len(reasoning)
                await self.publish(text_frame("reasoning", self._id, index, reasoning))

    def _over_budget(self) -> bool:
        assert self.budget is not None
        return self._prompt_estimate + estimate_tokens_of_length(self.length) > self.budget

    def _render(self, block: str) -> None:
        if self._renderer is None:
            self._renderer = asyncio.create_task(self._render_blocks(), name="chat-render")
        self._blocks.put_nowait(block)

    async def _render_blocks(self) -> None:
        """Render queued blocks one by one and publish each as an ``html`` frame."""
        while (block := await self._blocks.get()) is not None:
            html = await off_loop(render_block, block) if block else ""
            index = self.rendered
            self.rendered += len(block)
            self._html.append(html)
            frame: HtmlFrame = {
                "type": "html",
                "message": self._id,
                "index": index,
                "end": self.rendered,
                "html": html,
            }
            await self.publish(frame)

    async def _rendered_html(self) -> str:
        """The whole answer's HTML, once its last block is rendered and published."""
        rest = self._splitter.rest()
        if rest:
            self._render(rest)
        if self._renderer is None:
            return ""
        self._blocks.put_nowait(None)
        try:
            await self._renderer
        except Exception:
            logger.exception("Rendering message %s block by block failed", self.message_id)
            return await off_loop(render_markdown, self.text)
        return "".join(self._html)

    def checkpoint(self, *, heartbeat: bool = False) -> store.Checkpoint | None:
        """What to save of this answer now, or None if nothing changed since the last save.

        With ``heartbeat`` the row is written even if unchanged: its ``updated_at``
        tells other processes that this answer still has a process behind it.
        """
        lengths = (self.length, self._reasoning_length)
        if lengths == self.saved and not heartbeat:
            return None
        self.saved = lengths
        return (self.message_id, self.text, self.reasoning)

    async def _prepare(self) -> bool:
        """Let the project's builder shape the request; False if it failed (and the
        answer ended as ``failed``, or ``interrupted`` by a shutdown meanwhile)."""
        assert self.prepare is not None
        try:
            request = await self.prepare()
        except asyncio.CancelledError:
            await self._finish("interrupted", None)
            raise
        except Exception:
            logger.exception("CHAT_REQUEST_BUILDER failed for message %s", self.message_id)
            await self._finish("failed", RequestNotBuilt())
            return False
        self.history = request.messages
        self.config = replace(
            self.config, model=request.model, options=request.options, headers=request.headers
        )
        if self.budget is not None:
            self._prompt_estimate = estimate_prompt(self.history)
        self.answer.note("request_built", model=request.model, messages=len(request.messages))
        return True

    async def publish(self, frame: Frame) -> None:
        await hub.publish(self.conversation_id, frame)

    async def _finish(self, status: FinalStatus, error: ChatError | None) -> None:
        ended = time.monotonic()
        self.answer.scrub(self.config.secrets)
        error_info: ErrorInfo | None = (
            {"code": error.code, "detail": error.detail} if error is not None else None
        )
        if error is not None:
            logger.warning("Answer %s failed: %s: %s", self.message_id, error.code, error.detail)
        if status == "stopped" and self.stop_reason is not None:
            error_info = STOPPED[self.stop_reason]
        text = self.text
        answer = self.answer
        if answer.accepted:
            usage = Usage.of((answer.prompt_tokens, answer.completion_tokens), self.history, text)
        else:  # no server took the request (refused, an error status): nothing was spent
            usage = Usage(0, 0, estimated=False)
        answer.note(
            "finished",
            status=status,
            finish_reason=answer.finish_reason,
            error=error_info["code"] if error_info else None,
            length=self.length,
        )
        metrics.ANSWERS.labels(status).inc()
        if status == "failed" and error_info is not None:
            metrics.UPSTREAM_ERRORS.labels(error_info["code"]).inc()
        metrics.TOKENS.labels("prompt").inc(usage.prompt_tokens)
        metrics.TOKENS.labels("completion").inc(usage.completion_tokens)
        answer.note(
            "usage",
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            estimated=usage.estimated,
        )
        saved = False
        try:
            await self._save(status, text, error_info, usage, ended)
            saved = True
        except Exception:
            # Watchers must still learn how the answer ended; the row stays
            # ``streaming`` and is swept as interrupted later.
            logger.exception("Could not save the end of message %s", self.message_id)
        done = done_frame(
            self.message_id,
            self.conversation_id,
            length=self.length,
            status=status,
            usage=usage.info(),
            error=error_info,
            html=await self._rendered_html(),
            finish_reason=answer.finish_reason,
            refusal=answer.refusal,
        )
        await self.publish(done)
        if saved:  # else the sweep ends it, and tells (once either way)
            await signals.answer_ended(
                message_id=self.message_id,
                conversation_id=self.conversation_id,
                user_id=Owner.from_key(self.owner_key).user_id,
                status=status,
                usage=usage.info(),
                model=answer.model or self.config.model,
                time_to_first_token=self._time_to_first_token,
                duration=ended - self._started,
                error=error_info,
            )

    @property
    def _time_to_first_token(self) -> float | None:
        return None if self._first_token is None else self._first_token - self._started

    async def _save(
        self,
        status: FinalStatus,
        text: str,
        error_info: ErrorInfo | None,
        usage: Usage,
        ended: float,
    ) -> None:
        answer = self.answer
        first = self._time_to_first_token
        await store.finish_message(
            self.message_id,
            owner_key=self.owner_key,
            usage=usage,
            timeline=[
                {"at": at.isoformat(), "event": event, **details}
                for at, event, details in answer.events
            ],
            content=text,
            reasoning=self.reasoning,
            refusal=answer.refusal,
            tool_calls=answer.tool_calls,
            status=status,
            finish_reason=answer.finish_reason or "",
            error_code=error_info["code"] if error_info else "",
            error_detail=error_info["detail"] if error_info else "",
            model=answer.model or self.config.model,
            upstream_request_id=answer.request_id[:200],
            time_to_first_token=store.as_duration(first),
            duration=store.as_duration(ended - self._started),
        )


class Registry:
    """The generations running in this process."""

    def __init__(self) -> None:
        self._by_message: dict[uuid.UUID, Generation] = {}
        self._by_conversation: dict[uuid.UUID, Generation] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._checkpointer: asyncio.Task[None] | None = None

    def register(self, generation: Generation) -> None:
        """Make an answer known (to stops, snapshots, interest) before it starts."""
        self._by_message[generation.message_id] = generation
        self._by_conversation[generation.conversation_id] = generation

    def unregister(self, generation: Generation) -> None:
        """Forget an answer that never started (its row is swept as interrupted)."""
        self._by_message.pop(generation.message_id, None)
        if self._by_conversation.get(generation.conversation_id) is generation:
            del self._by_conversation[generation.conversation_id]

    def start(self, generation: Generation) -> asyncio.Task[None]:
        self.register(generation)
        task = asyncio.create_task(
            self._run(generation), name=f"chat-generation-{generation.message_id}"
        )
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._forget(generation, t))
        if self._checkpointer is None:
            self._checkpointer = asyncio.create_task(
                self._checkpoint_loop(), name="chat-checkpoints"
            )
        return task

    async def _run(self, generation: Generation) -> None:
        try:
            await generation.run()
        finally:
            await hub.release(generation.conversation_id)

    def spawn(self, work: Coroutine[Any, Any, object], *, name: str) -> None:
        """Run a side task of an answer (its title) that shutdown and tests wait for too."""
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._forget_task)

    def _forget_task(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("Task %s failed", task.get_name(), exc_info=task.exception())

    def _forget(self, generation: Generation, task: asyncio.Task[None]) -> None:
        self.unregister(generation)
        if not self._by_message and self._checkpointer is not None:
            self._checkpointer.cancel()
            self._checkpointer = None
        self._forget_task(task)

    async def _checkpoint_loop(self) -> None:
        """Save every running answer's new text, all in one transaction, once an interval.

        One database call an interval for the whole process, however many
        answers run: a new turn's setup never queues behind hundreds of checkpoints.
        """
        ticks = 0
        while True:
            await asyncio.sleep(conf.CHAT_CHECKPOINT_INTERVAL)
            ticks += 1
            beat = ticks * conf.CHAT_CHECKPOINT_INTERVAL >= conf.CHAT_ORPHAN_AFTER / 3
            if beat:
                ticks = 0
            rows = [
                row
                for g in self._by_message.values()
                if (row := g.checkpoint(heartbeat=beat)) is not None
            ]
            if not rows:
                continue
            try:
                await store.save_checkpoints(rows)
            except Exception:
                # The next checkpoint or the final save writes the text again.
                logger.exception("Could not checkpoint %d running answer(s)", len(rows))

    def get(self, message_id: uuid.UUID) -> Generation | None:
        return self._by_message.get(message_id)

    def running_ids(self) -> list[uuid.UUID]:
        return list(self._by_message)

    async def handle_control(self, request: control.Request) -> control.Reply | None:
        """Answer another process about an answer running here; None if it is not ours."""
        generation = self.get(uuid.UUID(request["message"]))
        if generation is None:
            return None
        if request["action"] == "stop":
            generation.stop(request["reason"], by=request["by"])
            return {"stopped": True}
        if request["action"] == "snapshot":
            return {"text": generation.text, "reasoning": generation.reasoning}
        return {"alive": True}

    def running_in(self, conversation_id: uuid.UUID) -> Generation | None:
        return self._by_conversation.get(conversation_id)

    def abandoned(self, conversation_id: uuid.UUID) -> None:
        """The last socket watching this conversation closed: apply ``CHAT_ON_DISCONNECT``."""
        generation = self.running_in(conversation_id)
        if generation is not None and conf.CHAT_ON_DISCONNECT == "stop":
            generation.stop("disconnected")

    @property
    def tasks(self) -> frozenset[asyncio.Task[None]]:
        """Every task the registry owns: the answers, and the checkpointer while any runs."""
        tasks = set(self._tasks)
        if self._checkpointer is not None:
            tasks.add(self._checkpointer)
        return frozenset(tasks)

    async def drain(self, timeout: float) -> None:
        """Wait for the running answers (and their titles) to end, at most ``timeout`` s."""
        tasks = list(self._tasks)
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    async def shutdown(self) -> None:
        """Interrupt every running generation and wait until each has saved its text."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


registry = Registry()


async def stop_anywhere(
    message_id: uuid.UUID, conversation_id: uuid.UUID, reason: StopReason, *, by: str = ""
) -> bool:
    """Stop an answer in whichever process runs it; False if no process does."""
    generation = registry.get(message_id)
    if generation is not None:
        generation.stop(reason, by=by)
        return True
    return await hub.ask(conversation_id, control.stop(message_id, reason, by)) is not None
