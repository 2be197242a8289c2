"""Finished answers become HTML that is safe: Markdown renders, scripts never do."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest

from chat.rendering import ALLOWED_TAGS, render_markdown


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param("<script>window.pwned = 1</script>", id="script-tag"),
        pytest.param('<img src=x onerror="window.pwned = 1">', id="onerror"),
        pytest.param("[click](javascript:window.pwned=1)", id="javascript-link"),
        pytest.param('<a href="javascript:alert(1)">x</a>', id="raw-javascript-link"),
        pytest.param("![x](javascript:alert(1))", id="javascript-image"),
        pytest.param('<svg onload="alert(1)"></svg>', id="svg-onload"),
        pytest.param('<iframe src="https://evil.example"></iframe>', id="iframe"),
        pytest.param("```html\n<script>alert(1)</script>\n```", id="script-in-code-block"),
        pytest.param("[x](data:text/html;base64,PHNjcmlwdD4=)", id="data-url"),
    ],
)
def test_model_output_cannot_run_script(payload: str) -> None:
    elements = Elements()
    elements.feed(render_markdown(payload))
    for tag, attrs in elements.found:
        assert tag in ALLOWED_TAGS
        for name, value in attrs:
            assert not name.startswith("on"), f"event handler {name} on <{tag}>"
            if name in ("href", "src"):
                assert (value or "").split(":")[0] in ("http", "https", "mailto")


class Elements(HTMLParser):
    """Every element and its attributes, as a browser would parse them."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, list[tuple[str, str | None]]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found.append((tag, attrs))


def test_markdown_renders_to_html() -> None:
    html = render_markdown(
        "# Title\n\n**bold**, *em*, `code`\n\n- a\n- b\n\n| x | y |\n|---|---|\n| 1 | 2 |"
    )
    for fragment in (
        "<h1>Title</h1>",
        "<strong>bold</strong>",
        "<em>em</em>",
        "<code>code</code>",
        "<li>a</li>",
        "<table>",
        "<td>1</td>",
    ):
        assert fragment in html


def test_fenced_code_is_highlighted() -> None:
    html = render_markdown("```python\ndef f():\n    return 1\n```")
    assert '<pre><code class="language-python">' in html
    assert '<span class="hl-k">def</span>' in html


def test_unknown_languages_are_escaped_not_highlighted() -> None:
    html = render_markdown("```nosuchlang\n<b>x</b>\n```")
    assert "&lt;b&gt;x&lt;/b&gt;" in html


def test_links_open_safely() -> None:
    html = render_markdown("[docs](https://example.com)")
    assert 'href="https://example.com"' in html
    assert 'rel="noopener noreferrer nofollow"' in html
