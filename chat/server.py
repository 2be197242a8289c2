"""daphne on uvloop: ``python -m chat.server`` takes daphne's own arguments.

daphne runs Twisted on an asyncio event loop that it creates when
``daphne.server`` is first imported, and has no option to choose the loop.
Setting uvloop's policy before that import puts Twisted, and with it every
socket and every answer, on uvloop: in bench/RESULTS.md that cut the relay's
CPU per token by 12-15 % under load.
Where uvloop is not installed (it does not support Windows) this is plain daphne.
"""

from __future__ import annotations

import asyncio
import sys


def install_uvloop() -> str:
    """Make the loops created from now on uvloop's; return the name of the loop in use."""
    if "daphne.server" in sys.modules:
        raise RuntimeError("daphne.server was imported first: its event loop already exists")
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    from daphne.server import twisted_loop

    # Checked rather than assumed: a daphne that makes its loop another way runs on asyncio.
    return "uvloop" if isinstance(twisted_loop, uvloop.Loop) else "asyncio"


def main() -> None:
    loop = install_uvloop()
    print(f"chat.server: daphne on the {loop} event loop", file=sys.stderr, flush=True)
    from daphne.cli import CommandLineInterface

    sys.argv[0] = "daphne"
    CommandLineInterface.entrypoint()


if __name__ == "__main__":
    main()
