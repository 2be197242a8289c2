"""ASGI entry point: HTTP through Django, websockets through Channels (as Channels documents)."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
# Set up Django (apps, settings) before importing anything that touches models.
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from chat.lifespan import LifespanApp  # noqa: E402
from chat.middleware import SessionAuthMiddleware  # noqa: E402
from chat.origins import SameOriginValidator  # noqa: E402
from chat.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": SameOriginValidator(SessionAuthMiddleware(URLRouter(websocket_urlpatterns))),
        # Servers with the lifespan protocol save running answers on shutdown;
        # under daphne the chat app hooks into Twisted's shutdown instead.
        "lifespan": LifespanApp(),
    }
)
