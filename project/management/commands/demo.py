"""``manage.py demo``: migrate, make the demo user, and serve the site with daphne."""

import errno
import os
import socket
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser

from project.views import DEMO_USER


def port_in_use(host: str, port: int) -> bool:
    """Whether something listens there already (daphne would print an error and hang)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                return True
            raise
    return False


class Command(BaseCommand):
    help = "Set up the demo site (migrations, a 'demo' user) and run it on 127.0.0.1:8000."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("addrport", nargs="?", default="127.0.0.1:8000")

    def handle(self, *args: Any, addrport: str, **options: Any) -> None:
        if not settings.DEBUG:
            raise CommandError("The demo command only runs with DJANGO_DEBUG on.")
        # runserver's autoreloader runs this command again in a child process
        # (RUN_MAIN): set up, check and greet once, in the parent.
        if os.environ.get("RUN_MAIN") != "true":
            host, _, port = addrport.rpartition(":")
            if port_in_use(host.strip("[]") or "127.0.0.1", int(port)):
                raise CommandError(
                    f"Port {port} is already in use: stop what runs there, "
                    f"or choose another port (make run PORT=8001)."
                )
            call_command("migrate", interactive=False, verbosity=0)
            User = get_user_model()
            if not User.objects.filter(username=DEMO_USER).exists():
                User.objects.create_superuser(DEMO_USER, password=DEMO_USER)
                self.stdout.write(f"Created the superuser {DEMO_USER!r} (password {DEMO_USER!r}).")
            self.stdout.write(
                f"Open http://{addrport}/ and log in as {DEMO_USER}/{DEMO_USER} "
                f"(the admin is at /admin/)."
            )
        call_command("runserver", addrport)
