"""The demo project's settings, as the benchmark serves them (production-like, quiet).

The database is a file chosen by the harness (``DATABASE_URL``); every database
write is counted so the results can say how many writes a stream costs.
"""

from __future__ import annotations

import os

from project.settings import *  # noqa: F403

DEBUG = False
SECRET_KEY = "bench-only-secret-key-not-for-production-0123456789"
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "bench.urls"
INSTALLED_APPS = [*INSTALLED_APPS, "bench"]  # noqa: F405
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "loggers": {"chat": {"level": "WARNING"}, "django": {"level": "WARNING"}},
}
OPENAI_BASE_URL = os.environ["BENCH_UPSTREAM_URL"]
OPENAI_API_KEY = "sk-bench"
CHAT_MODEL = "bench"
# Titles on, as a user runs the app: after each first answer, one short request and a write.
CHAT_AUTO_TITLE = True
# Each socket is a user of its own (bench/prepare.py), so the default per-user limits
# stay on, and are checked on every turn as in production.
