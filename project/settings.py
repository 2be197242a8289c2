"""Settings of the demo site.

Everything an operator changes comes from the environment: ``DATABASE_URL``
(SQLite in the checkout by default), ``REDIS_URL`` (the in-memory channel
layer by default), ``OPENAI_API_KEY`` / ``OPENAI_BASE_URL`` (the built-in demo
model by default), ``DJANGO_DEBUG``, ``DJANGO_SECRET_KEY``, ``DJANGO_ALLOWED_HOSTS``.
"""

from __future__ import annotations

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_flag(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    return default if value is None else value.strip().lower() in ("1", "true", "yes", "on")


DEBUG = env_flag("DJANGO_DEBUG", True)
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("Set DJANGO_SECRET_KEY when DJANGO_DEBUG is off.")
    SECRET_KEY = "django-insecure-demo-key-for-local-development-only"
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]").split(",")
CSRF_TRUSTED_ORIGINS = [
    origin for origin in os.environ.get("DJANGO_CSRF_TRUSTED_ORIGINS", "").split(",") if origin
]

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "servestatic",
    "chat",
    "project",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Static files from the app server itself (python -m chat.server serves no
    # /static/ of its own): STATIC_ROOT after collectstatic, the apps' folders with DEBUG.
    "servestatic.middleware.ServeStaticMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

if not DEBUG:
    # Production: behind a TLS-terminating proxy that sets X-Forwarded-Proto
    # (see README "Scaling out"). `manage.py check --deploy` passes with these.
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env_flag("DJANGO_SECURE_SSL_REDIRECT", True)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = int(os.environ.get("DJANGO_HSTS_SECONDS", str(60 * 60 * 24 * 365)))
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_flag("DJANGO_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = env_flag("DJANGO_HSTS_PRELOAD", True)

ROOT_URLCONF = "project.urls"
ASGI_APPLICATION = "project.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.config(
        default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}",
        # Keep connections open: Channels would otherwise open and close one
        # around every database call of every socket (see PERFORMANCE notes).
        conn_max_age=600,
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        # Wait for the write lock instead of failing at once under concurrent writes,
        # take it at the start of a transaction, and commit to a write-ahead log
        # (a checkpoint then costs a fraction of a millisecond instead of an fsync).
        timeout=20,
        transaction_mode="IMMEDIATE",
        init_command="PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    )

REDIS_URL = os.environ.get("REDIS_URL", "")
if REDIS_URL and os.environ.get("REDIS_LAYER", "pubsub") == "pubsub":
    # Redis pub/sub: a frame costs one PUBLISH and is pushed to the processes
    # that subscribed. Nothing is queued for a process that is not listening,
    # which suits frames: a socket that misses one resyncs by ``index``.
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL], "prefix": os.environ.get("REDIS_PREFIX", "asgi")},
        }
    }
elif REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                "hosts": [REDIS_URL],
                # Several sites (or test runs) can share one Redis with their own prefix.
                "prefix": os.environ.get("REDIS_PREFIX", "asgi"),
                # Each process receives every frame for all its watchers on one
                # channel: the default capacity of 100 would drop frames under load.
                "channel_capacity": {"chat.process.*": 50_000},
            },
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "chat:index"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {
        # Not propagated: daphne gives the root logger a handler too, which would print twice.
        "chat": {
            "handlers": ["console"],
            "level": os.environ.get("CHAT_LOG_LEVEL", "INFO"),
            "propagate": False,
        }
    },
}

# The chat app's own settings (see README "Settings"); the defaults suit the demo.
if os.environ.get("CHAT_MODEL"):
    CHAT_MODEL = os.environ["CHAT_MODEL"]
CHAT_SYSTEM_PROMPT = os.environ.get("CHAT_SYSTEM_PROMPT", "")
CHAT_ALLOW_ANONYMOUS = env_flag("CHAT_ALLOW_ANONYMOUS", False)
CHAT_AUTO_TITLE = env_flag("CHAT_AUTO_TITLE", True)
_NUMBERS: dict[str, type[int] | type[float]] = {
    "CHAT_DEMO_TOKENS_PER_SECOND": float,
    "CHAT_ORPHAN_AFTER": float,
    "CHAT_DRAIN_TIMEOUT": float,
    "CHAT_PROCESS_TIMEOUT": float,
    "CHAT_CHECKPOINT_INTERVAL": float,
    "CHAT_SLOW_CLIENT_TIMEOUT": float,
    "CHAT_MAX_RETRIES": int,
    "CHAT_MAX_RUNNING_ANSWERS": int,
    "CHAT_TURNS_PER_MINUTE": int,
    "CHAT_SEND_WINDOW": int,
}
for _name, _kind in _NUMBERS.items():
    if os.environ.get(_name):
        globals()[_name] = _kind(os.environ[_name])
if os.environ.get("CHAT_ON_DISCONNECT"):
    CHAT_ON_DISCONNECT = os.environ["CHAT_ON_DISCONNECT"]
