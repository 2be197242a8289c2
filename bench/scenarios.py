"""What the benchmark runs and what it measures: the scenarios and one row of results.

Kept apart from the code that runs them so that the load generator, the report
and the command line share one definition of a scenario and of a result.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Scenario:
    name: str
    streams: int = 0
    tokens: int = 0
    rate: float = 0.0  # tokens per second per stream; 0 = as fast as possible
    idle_sockets: int = 0


# Idle sockets first: the relay's memory is measured before anything else grew its heap.
FULL = [
    Scenario("1,000 idle sockets", idle_sockets=1000),
    Scenario("1 stream × 500 tokens at 100/s", 1, 500, 100),
    Scenario("100 streams × 300 tokens at 30/s", 100, 300, 30),
    Scenario("500 streams × 300 tokens at 30/s", 500, 300, 30),
    Scenario("20 streams × 2,000 tokens, as fast as possible", 20, 2000, 0),
]
QUICK = [
    Scenario("20 idle sockets", idle_sockets=20),
    Scenario("8 streams × 40 tokens at 200/s", 8, 40, 200),
    Scenario("2 streams × 200 tokens, as fast as possible", 2, 200, 0),
]


@dataclass
class Result:
    relay: str
    scenario: str
    streams: int = 0
    completed: int = 0
    errors: int = 0
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    latency_max_ms: float | None = None
    first_delta_p50_ms: float | None = None
    frames: int = 0
    tokens: int = 0
    seconds: float = 0.0
    relay_cpu_s: float | None = None
    #: CPU time of the PostgreSQL server's processes meanwhile (rows on PostgreSQL only).
    database_cpu_s: float | None = None
    loadgen_cpu_s: float = 0.0
    db_writes: int | None = None
    rss_per_socket_kb: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def tokens_per_cpu_s(self) -> float | None:
        return self.tokens / self.relay_cpu_s if self.relay_cpu_s else None

    @property
    def frames_per_cpu_s(self) -> float | None:
        return self.frames / self.relay_cpu_s if self.relay_cpu_s else None
