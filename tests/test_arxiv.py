"""arXiv search against a local HTTP server serving the arXiv API's Atom feed (no internet needed)."""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import parse_qs
from xml.sax.saxutils import escape

from aiohttp import web

from models.agent.actions import ArxivSearchAction, render_links
from tests.local_http import serve

FEED = """<?xml version="1.0" encoding="UTF-8"?>
<feed xmlns="http://www.w3.org/2005/Atom" xmlns:opensearch="http://a9.com/-/spec/opensearch/1.1/"
      xmlns:arxiv="http://arxiv.org/schemas/atom">
  <title type="html">ArXiv Query: search_query=all:test</title>
  <id>http://arxiv.org/api/test</id>
  <updated>2024-01-10T00:00:00-05:00</updated>
  <opensearch:totalResults>2</opensearch:totalResults>
  <opensearch:startIndex>0</opensearch:startIndex>
  <opensearch:itemsPerPage>2</opensearch:itemsPerPage>
  <entry>
    <id>http://arxiv.org/abs/2401.00001v1</id>
    <updated>2024-01-02T00:00:00Z</updated>
    <published>2024-01-01T00:00:00Z</published>
    <title>Denoising Diffusion
      for Testing</title>
    <summary>  We test diffusion [models] thoroughly.  </summary>
    <author><name>Ada Lovelace</name></author>
    <author><name>Alan Turing</name></author>
    <link href="http://arxiv.org/abs/2401.00001v1" rel="alternate" type="text/html"/>
    <link title="pdf" href="http://arxiv.org/pdf/2401.00001v1" rel="related" type="application/pdf"/>
    <arxiv:primary_category term="cs.LG" scheme="http://arxiv.org/schemas/atom"/>
    <category term="cs.LG" scheme="http://arxiv.org/schemas/atom"/>
  </entry>
  <entry>
    <id>http://arxiv.org/abs/2401.00002v2</id>
    <updated>2024-01-05T00:00:00Z</updated>
    <published>2024-01-03T00:00:00Z</published>
    <title>A [Bracketed] Title</title>
    <summary>Second paper.</summary>
    <author><name>A</name></author><author><name>B</name></author>
    <author><name>C</name></author><author><name>D</name></author>
    <link href="http://arxiv.org/abs/2401.00002v2" rel="alternate" type="text/html"/>
    <arxiv:primary_category term="math.NT" scheme="http://arxiv.org/schemas/atom"/>
    <category term="math.NT" scheme="http://arxiv.org/schemas/atom"/>
  </entry>
</feed>
"""

EMPTY = FEED.split("<entry>")[0].replace("<opensearch:totalResults>2", "<opensearch:totalResults>0") + "</feed>"


def feed_of(*entries: dict[str, Any]) -> str:
    """An arXiv API Atom feed (the shape of FEED above) holding these papers: each a dict with `id` (e.g.
    "2403.17297v1"), `title`, `summary`, `published` (YYYY-MM-DD) and `authors`; text is XML-escaped, so
    whatever a paper's abstract says arrives as that text."""
    head, _, _ = FEED.partition("  <entry>")
    head = head.replace("<opensearch:totalResults>2", f"<opensearch:totalResults>{len(entries)}")
    body = ""
    for e in entries:
        url = f"http://arxiv.org/abs/{e['id']}"
        authors = "".join(f"<author><name>{escape(a)}</name></author>" for a in e["authors"])
        body += (
            f"  <entry>\n    <id>{url}</id>\n    <updated>{e['published']}T00:00:00Z</updated>\n"
            f"    <published>{e['published']}T00:00:00Z</published>\n    <title>{escape(e['title'])}</title>\n"
            f"    <summary>{escape(e['summary'])}</summary>\n    {authors}\n"
            f'    <link href="{url}" rel="alternate" type="text/html"/>\n'
            '    <arxiv:primary_category term="cs.CL" scheme="http://arxiv.org/schemas/atom"/>\n'
            '    <category term="cs.CL" scheme="http://arxiv.org/schemas/atom"/>\n  </entry>\n'
        )
    return head + body + "</feed>\n"


class AtomServer:
    """A local stand-in for export.arxiv.org/api/query that records the queries it got."""

    def __init__(self, mode: str = "ok", feed: str | None = None) -> None:
        self.mode = mode  # "ok" | "empty" | "slow" | "error"
        self.feed = feed or FEED  # what "ok" answers
        self.queries: list[str] = []
        self.runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/query"

    async def handle(self, request: web.Request) -> web.Response:
        query = parse_qs(request.query_string).get("search_query", [""])[0]
        self.queries.append(query)
        if self.mode == "slow":
            await asyncio.sleep(3)
        if self.mode == "error":
            return web.Response(status=503, text="busy")
        body = EMPTY if self.mode == "empty" else self.feed
        return web.Response(text=body, content_type="application/atom+xml")

    async def __aenter__(self) -> AtomServer:
        app = web.Application()
        app.router.add_get("/api/query", self.handle)
        self.runner, self.port = await serve(app)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


async def test_results_are_parsed_and_rendered_as_links() -> None:
    async with AtomServer() as server:
        action = ArxivSearchAction(base_url=server.url, timeout=5, max_results=3)
        result = await asyncio.to_thread(action, {"query": "diffusion"}, "get_arxiv_article_information")
    assert server.queries == ["diffusion"]
    assert result.errmsg is None, result.errmsg
    papers = action.papers
    assert [p.title for p in papers] == ["Denoising Diffusion for Testing", "A [Bracketed] Title"]
    assert papers[0].authors == ["Ada Lovelace", "Alan Turing"]
    assert papers[0].published == "2024-01-01"
    assert papers[0].summary == "We test diffusion [models] thoroughly."
    text = result.format_result()
    assert "Link: http://arxiv.org/abs/2401.00001v1" in text and "Title: Denoising Diffusion for Testing" in text
    links = render_links(papers)
    assert links.splitlines()[0] == (
        "1. [Denoising Diffusion for Testing](<http://arxiv.org/abs/2401.00001v1>) "
        "— Ada Lovelace, Alan Turing (2024-01-01)"
    )
    assert "[A (Bracketed) Title](<http://arxiv.org/abs/2401.00002v2>) — A, B, C et al." in links


async def test_no_results() -> None:
    async with AtomServer("empty") as server:
        action = ArxivSearchAction(base_url=server.url, timeout=5)
        result = await asyncio.to_thread(action, {"query": "nothing"}, "get_arxiv_article_information")
    assert "No arXiv papers" in result.format_result()


async def test_server_error_is_a_clear_tool_error() -> None:
    async with AtomServer("error") as server:
        action = ArxivSearchAction(base_url=server.url, timeout=5)
        result = await asyncio.to_thread(action, {"query": "x"}, "get_arxiv_article_information")
    assert result.errmsg and "arXiv search failed" in result.errmsg


async def test_a_stalled_server_hits_the_timeout() -> None:
    async with AtomServer("slow") as server:
        action = ArxivSearchAction(base_url=server.url, timeout=0.5)
        started = time.monotonic()
        result = await asyncio.to_thread(action, {"query": "x"}, "get_arxiv_article_information")
        elapsed = time.monotonic() - started
    assert elapsed < 4
    assert result.errmsg and "Timeout" in result.errmsg


def test_tools_follow_the_settings() -> None:
    from models.agent.actions import build_plugins
    from models.settings import Settings

    names = lambda s: [p.name for p in build_plugins(s)]  # noqa: E731
    assert names(Settings(_env_file=None)) == ["ArxivSearch"]
    assert names(Settings(_env_file=None, agent_arxiv=False)) == []
    assert names(Settings(_env_file=None, serper_api_key="k")) == ["ArxivSearch", "GoogleSearch"]


async def test_a_built_feed_round_trips_its_text() -> None:
    """`feed_of` (used by the replay tests) gives a feed the real `arxiv` client reads back as written,
    markup-like characters included."""
    paper = {
        "id": "2403.17297v1",
        "title": "InternLM2 Technical Report",
        "published": "2024-03-26",
        "authors": ["Zheng Cai", "Maosong Cao"],
        "summary": 'a <b>bold</b> & "quoted" abstract <|im_end|>',
    }
    async with AtomServer(feed=feed_of(paper)) as server:
        action = ArxivSearchAction(base_url=server.url, timeout=5)
        await asyncio.to_thread(action, {"query": "InternLM2"}, "get_arxiv_article_information")
    [found] = action.papers
    assert (found.title, found.url, found.published) == (
        "InternLM2 Technical Report",
        "http://arxiv.org/abs/2403.17297v1",
        "2024-03-26",
    )
    assert found.authors == ["Zheng Cai", "Maosong Cao"]
    assert found.summary == paper["summary"]
