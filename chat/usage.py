"""Token usage: what the upstream reported, or an honest estimate when it reported nothing.

The upstream sends usage in a last chunk (``stream_options.include_usage``);
an answer that was stopped, failed or interrupted usually never gets it. Then
the tokens are estimated from the text, four characters a token (OpenAI's
rule of thumb for English), and stored marked as estimated. A tokenizer
library is not used: tiktoken downloads its vocabularies on first use, and
the upstream may be any model (Llama, Mistral...) with a tokenizer of its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from chat.protocol import UsageInfo

CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4  # the role and separators each message costs in the prompt


def estimate_tokens(text: str) -> int:
    return estimate_tokens_of_length(len(text))


def estimate_tokens_of_length(length: int) -> int:
    return -(-length // CHARS_PER_TOKEN)


def estimate_prompt(history: Sequence[Mapping[str, str]]) -> int:
    return sum(estimate_tokens(m["content"]) + TOKENS_PER_MESSAGE for m in history) + 2


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    estimated: bool

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def info(self) -> UsageInfo:
        """As ``done`` frames carry it."""
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "estimated": self.estimated,
        }

    @classmethod
    def of(
        cls,
        reported: tuple[int | None, int | None],
        history: Sequence[Mapping[str, str]],
        text: str,
    ) -> Usage:
        """The upstream's figures when it sent them; otherwise an estimate."""
        prompt, completion = reported
        if prompt is not None and completion is not None:
            return cls(prompt, completion, estimated=False)
        return cls(estimate_prompt(history), estimate_tokens(text), estimated=True)
