"""A new Django project gets chat by following the README alone: this test does what it says.

It builds the package (``python -m build``, ``twine check``), installs the wheel
into a fresh virtualenv, makes a project with ``django-admin startproject``,
applies the README's "Add `chat` to your project" blocks (read from README.md,
so the two cannot drift apart), runs its commands, serves the site both ways
the README does (``runserver``; ``collectstatic`` then ``python -m chat.server``),
logs in through the login page, chats with the demo model over the websocket,
opens the transcript in the admin and logs out. Once on the oldest supported
Python and Django, once on the newest.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import websockets

from chat.demo import compose_answer
from tests.servers import ROOT, unused_port

pytestmark = pytest.mark.integration

PROJECT = "mysite"
USER, PASSWORD = "ada", "pw-ada-12345"
README = ROOT / "README.md"
BLOCK = re.compile(r"<!-- adopt: (?P<what>[^>]+?) -->\s*```\w*\n(?P<code>.*?)\n\s*```", re.S)


def readme_blocks() -> list[tuple[str, str]]:
    """The README's adoption steps: (what to do, the block's code, unindented)."""
    blocks = []
    for match in BLOCK.finditer(README.read_text()):
        lines = match["code"].splitlines()
        indent = min(len(line) - len(line.lstrip()) for line in lines if line.strip())
        code = "\n".join(line[indent:] for line in lines).replace("yourproject", PROJECT)
        blocks.append((match["what"].strip().replace("yourproject", PROJECT), code + "\n"))
    return blocks


def python(version: str) -> str | None:
    """An interpreter of this version on the machine (pyenv's, or on PATH)."""
    versions = Path(os.environ.get("PYENV_ROOT", "/root/.pyenv")) / "versions"
    for candidate in sorted(versions.glob(f"{version}.*/bin/python"), reverse=True):
        return str(candidate)
    found = subprocess.run(
        ["sh", "-c", f"command -v python{version}"], capture_output=True, text=True
    ).stdout.strip()
    return found or None


def run(*args: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{shlex.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package as users get it: built, checked, with every file the app needs."""
    dist = tmp_path_factory.mktemp("dist")
    run(sys.executable, "-m", "build", "--outdir", str(dist), str(ROOT), cwd=ROOT)
    built = sorted(dist.iterdir())
    run(sys.executable, "-m", "twine", "check", "--strict", *map(str, built), cwd=ROOT)
    return next(path for path in built if path.suffix == ".whl")


def test_the_wheel_holds_every_template_static_file_and_migration(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    app = ROOT / "chat"
    needed = {
        str(path.relative_to(ROOT))
        for folder in ("templates", "static", "migrations")
        for path in (app / folder).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    assert needed, "the app has templates, static files and migrations"
    assert needed <= names, sorted(needed - names)
    assert "chat/py.typed" in names


@dataclass
class Site:
    url: str
    process: subprocess.Popen[str]


@contextmanager
def serving(command: str, cwd: Path, env: dict[str, str], bin_dir: Path) -> Iterator[Site]:
    """Run a README serve command on a free port until the site answers."""
    port = unused_port()
    if "runserver" in command:
        # The README's development server; no autoreloader, so that stopping it stops it.
        command += f" 127.0.0.1:{port} --noreload"
    else:
        command = re.sub(r"-p \d+", f"-p {port}", command)
    args = shlex.split(command)
    args[0] = str(bin_dir / args[0])
    process = subprocess.Popen(
        args, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, f"{command} exited:\n{process.stderr.read()}"  # type: ignore[union-attr]
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert time.monotonic() < deadline, f"{command} did not listen in 30 s"
            time.sleep(0.1)  # polling a port another process opens: there is no event
        yield Site(f"http://127.0.0.1:{port}", process)
    finally:
        process.terminate()
        process.wait(timeout=15)
        if process.stderr is not None:
            # Shown by pytest only when the test fails: the server's side of it.
            print(f"--- {command}:\n{process.stderr.read()[-20_000:]}")
            process.stderr.close()


async def use_the_site_as_a_new_user_would(site: Site) -> None:
    async with httpx.AsyncClient(base_url=site.url) as browser:
        # The chat page sends a visitor to the login page, which exists.
        response = await browser.get("/chat/")
        assert response.status_code == 302
        login = await browser.get(response.headers["location"])
        assert login.status_code == 200 and 'name="password"' in login.text
        response = await browser.post(
            "/accounts/login/",
            data={
                "username": USER,
                "password": PASSWORD,
                "csrfmiddlewaretoken": browser.cookies["csrftoken"],
                "next": "/chat/",
            },
            headers={"Referer": site.url + "/accounts/login/"},
        )
        assert (response.status_code, response.headers["location"]) == (302, "/chat/")
        page = await browser.get("/chat/")
        assert page.status_code == 200
        assert f"Logged in as <strong>{USER}</strong>" in page.text and "Log out" in page.text
        # The page's script and styles are served, as what they are.
        for asset, kind in (("chat.js", "javascript"), ("chat.css", "text/css")):
            src = re.search(rf'"(/static/[^"]*{re.escape(asset)})"', page.text)
            assert src is not None, f"{asset} is not linked from the page"
            served = await browser.get(src[1])
            assert served.status_code == 200 and kind in served.headers["content-type"]

        # Chat with the demo model over the websocket.
        async with websockets.connect(
            site.url.replace("http", "ws") + "/ws/chat/",
            additional_headers={
                "Cookie": f"sessionid={browser.cookies['sessionid']}",
                "Origin": site.url,
            },
        ) as chat:
            question = "Hello from a brand-new project!"
            await chat.send(json.dumps({"type": "send", "conversation": None, "content": question}))
            frames = []
            while not frames or frames[-1]["type"] != "done":
                frames.append(json.loads(await receive(chat)))
        text = "".join(f["text"] for f in frames if f["type"] == "delta")
        assert text == compose_answer(question)
        assert frames[-1]["status"] == "complete"
        conversation = frames[-1]["conversation"]

        # The transcript, in the admin.
        listing = await browser.get("/admin/chat/conversation/")
        assert listing.status_code == 200 and "Hello from a brand-new project" in listing.text
        transcript = await browser.get(f"/admin/chat/conversation/{conversation}/change/")
        assert transcript.status_code == 200 and "built-in demo model" in transcript.text

        # And out again.
        response = await browser.post(
            "/accounts/logout/",
            data={"csrfmiddlewaretoken": browser.cookies["csrftoken"]},
            headers={"Referer": site.url + "/chat/"},
        )
        assert response.status_code == 302
        assert (await browser.get("/chat/")).status_code == 302


async def receive(chat: websockets.ClientConnection) -> str | bytes:
    async with asyncio.timeout(30):
        return await chat.recv()


MATRIX = [
    pytest.param("3.11", "django==5.2", id="oldest-python3.11-django5.2.0"),
    pytest.param("3.13", "django>=5.2,<6", id="newest-python3.13-django5.2.x"),
]


@pytest.mark.parametrize(("version", "django"), MATRIX)
async def test_a_new_project_following_the_readme_chats_on_the_first_try(
    wheel: Path, tmp_path: Path, version: str, django: str
) -> None:
    interpreter = python(version)
    if interpreter is None:
        pytest.skip(f"no Python {version} on this machine")
    venv = tmp_path / "venv"
    bin_dir = venv / "bin"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "CHAT_", "DJANGO"))}
    env.pop("PYTHONPATH", None)
    env.update(
        PATH=f"{bin_dir}:{env['PATH']}",
        VIRTUAL_ENV=str(venv),
        DJANGO_SUPERUSER_USERNAME=USER,
        DJANGO_SUPERUSER_PASSWORD=PASSWORD,
        DJANGO_SUPERUSER_EMAIL="ada@example.com",
    )
    run(interpreter, "-m", "venv", str(venv), cwd=tmp_path, env=env)
    run(str(bin_dir / "pip"), "install", "--quiet", str(wheel), django, cwd=tmp_path, env=env)
    site = tmp_path / "site"
    site.mkdir()
    run(str(bin_dir / "django-admin"), "startproject", PROJECT, str(site), cwd=tmp_path, env=env)

    blocks = readme_blocks()
    assert [what.split()[0] for what in dict(blocks)] == [
        "append",
        "write",
        "write",
        "run",
        "serve",
    ]
    served = []
    for what, code in blocks:
        verb, _, target = what.partition(" ")
        if verb == "append":
            with (site / target).open("a") as settings:
                settings.write("\n" + code)
        elif verb == "write":
            (site / target).write_text(code)
        else:
            for command in code.splitlines():
                if "runserver" in command or "chat.server" in command:
                    served.append(command)
                    continue
                args = shlex.split(command)
                if args[-1] == "createsuperuser":
                    args.append("--noinput")  # as typed, with the answers from the environment
                args[0] = str(bin_dir / args[0])
                run(*args, cwd=site, env=env)
    assert len(served) == 2  # runserver, then python -m chat.server
    # The installed package is used, not this checkout.
    where = run(
        str(bin_dir / "python"), "-c", "import chat; print(chat.__file__)", cwd=site, env=env
    )
    assert str(venv) in where
    for command in served:
        with serving(command, site, env, bin_dir) as running:
            await use_the_site_as_a_new_user_would(running)
    # In production (DEBUG off), the static files come from collectstatic's STATIC_ROOT.
    with (site / PROJECT / "settings.py").open("a") as settings:
        settings.write('\nDEBUG = False\nALLOWED_HOSTS = ["127.0.0.1"]\n')
    with serving(served[-1], site, env, bin_dir) as running:
        await use_the_site_as_a_new_user_would(running)
