"""What an operator watches, in Prometheus' text format (``prometheus-client``).

Counted where it happens, in this process: a deployment of several processes
is summed by Prometheus. Names follow Prometheus' conventions (``_total`` for
counters, seconds for durations). The endpoint is ``chat.views.metrics``.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

SOCKETS = Gauge("chat_sockets_open", "Chat websockets open in this process.")
ANSWERS_RUNNING = Gauge("chat_answers_running", "Answers being written by this process.")
ANSWERS = Counter(
    "chat_answers_total", "Answers that ended, by how they ended.", labelnames=("status",)
)
UPSTREAM_ERRORS = Counter(
    "chat_upstream_errors_total",
    "Answers that failed, by error code (upstream_auth, rate_limited, upstream_timeout...).",
    labelnames=("code",),
)
CHARACTERS = Counter(
    "chat_answer_characters_total", "Characters of answer text relayed, as they stream."
)
TOKENS = Counter(
    "chat_tokens_total",
    "Tokens of ended answers, as reported by the upstream or estimated.",
    labelnames=("kind",),
)
FIRST_TOKEN = Histogram(
    "chat_time_to_first_token_seconds",
    "From the turn's start to its answer's first text.",
    buckets=(0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32),
)
DRAINING = Gauge("chat_draining", "1 while this process finishes its answers before it exits.")
