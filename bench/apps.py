from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.db.backends.signals import connection_created

WRITES = {"count": 0}


def count_writes(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
    if sql.lstrip()[:6].upper() in ("INSERT", "UPDATE", "DELETE"):
        WRITES["count"] += len(params) if many else 1  # rows of an executemany
    return execute(sql, params, many, context)


def install_counter(sender: Any, connection: Any, **kwargs: Any) -> None:
    connection.execute_wrappers.append(count_writes)


class BenchConfig(AppConfig):
    """Counts database writes of the relay under benchmark."""

    name = "bench"

    def ready(self) -> None:
        connection_created.connect(install_counter)
