"""``python -m chat.server``: daphne, as the README serves it, on uvloop."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest

from chat.server import install_uvloop
from tests.servers import daphne, prepare_site

pytestmark = pytest.mark.integration


def test_it_serves_the_project_on_uvloop(tmp_path: Path) -> None:
    with daphne(prepare_site(tmp_path)) as site:
        assert "chat.server: daphne on the uvloop event loop\n" in site.log
        assert httpx.get(site.url + "/accounts/login/").status_code == 200


def test_it_refuses_once_daphne_made_its_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "daphne.server", sys.modules[__name__])
    with pytest.raises(RuntimeError, match="already exists"):
        install_uvloop()
