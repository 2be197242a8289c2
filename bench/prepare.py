"""Prepare the benchmark's database: migrate, make N users, print a session key for each.

``python -m bench.prepare N`` prints N keys, one a line; user ``bench-<i>`` is
logged in with key *i*. Run again on the same database it reuses the users.
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")
    import django

    django.setup()
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.auth.models import User
    from django.contrib.sessions.backends.db import SessionStore
    from django.core.management import call_command
    from django.db import transaction

    call_command("migrate", interactive=False, verbosity=0)
    names = [f"bench-{i}" for i in range(count)]
    with transaction.atomic():
        existing = set(User.objects.filter(username__in=names).values_list("username", flat=True))
        new = [User(username=name, password="!") for name in names if name not in existing]
        User.objects.bulk_create(new)
        users = {u.username: u for u in User.objects.filter(username__in=names)}
        keys = []
        for name in names:
            user = users[name]
            session = SessionStore()
            session[SESSION_KEY] = str(user.pk)
            session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
            session[HASH_SESSION_KEY] = user.get_session_auth_hash()
            session.save()
            keys.append(session.session_key)
    print("\n".join(keys))


if __name__ == "__main__":
    main()
