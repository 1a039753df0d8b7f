"""The agent's tools, as Lagent actions.

* `SandboxedPython` — InternLM2's code interpreter, but the code runs in `models.sandbox` (a separate,
  locked-down process), never `exec()`-ed in the worker as Lagent's Python interpreters do.
* `ArxivSearchAction` — arXiv search with a timeout and a configurable API URL (tests point it at a local
  server); results keep their links so front ends can render them.
* Lagent's `GoogleSearch` (serper.dev) when `SERPER_API_KEY` is configured.

Adding a tool: subclass `BaseAction`, write a `run` method (or several `@tool_api` methods) with a Google-style
docstring (Lagent turns it into the tool description the model reads), and add it in `build_plugins`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import requests
from lagent.actions import ActionExecutor, BaseAction, tool_api
from lagent.actions.parser import JsonParser
from lagent.schema import ActionReturn, ActionStatusCode

from ..sandbox import RunResult, Sandbox
from .parsing import extract_code

log = logging.getLogger(__name__)


class SandboxedPython(BaseAction):
    """A Python interpreter that runs each piece of code in a fresh, isolated sandbox process
    (no network, no access to the host; numpy, sympy and matplotlib available)."""

    def __init__(self, sandbox: Sandbox, enable: bool = True, files: Mapping[str, bytes] | None = None) -> None:
        super().__init__(parser=JsonParser, enable=enable)
        self.sandbox = sandbox
        # The task's attached files (safe name → bytes): written afresh into every run of this task, so each
        # code cell finds them, and no later task does (each job builds its own interpreter).
        self.files = dict(files or {})
        self.results: list[RunResult] = []  # every run of this agent run, for figures and the summary

    @tool_api
    def run(self, command: str) -> ActionReturn:
        """Run Python code and return what it prints (and the value of its last expression).

        Args:
            command (str): the Python code to run
        """
        # InternLM2 sends a fenced block (often with thought text or an unclosed fence); run only the code.
        code = extract_code(command)
        if not code.strip():
            return ActionReturn(
                args={"command": code},
                type=self.name,
                state=ActionStatusCode.ARGS_ERROR,
                errmsg="There is no code to run: send the code in a ```python block.",
            )
        result = self.sandbox.run(code, files=self.files)
        self.results.append(result)
        # Like IPython, errors are output the model should read and fix, not a failed call.
        return ActionReturn(
            args={"command": code},
            type=self.name,
            state=ActionStatusCode.SUCCESS,
            result=[{"type": "text", "content": result.for_model()}],
        )


@dataclass
class Paper:
    title: str
    url: str
    authors: list[str] = field(default_factory=list)
    published: str = ""
    summary: str = ""


def render_links(papers: list[Paper]) -> str:
    """Papers as a Markdown list of links (angle brackets keep Discord from embedding each one)."""
    lines = []
    for i, p in enumerate(papers, 1):
        authors = ", ".join(p.authors[:3]) + (" et al." if len(p.authors) > 3 else "")
        title = p.title.replace("[", "(").replace("]", ")")
        lines.append(f"{i}. [{title}](<{p.url}>) — {authors}" + (f" ({p.published})" if p.published else ""))
    return "\n".join(lines)


class _TimeoutSession(requests.Session):
    """The `arxiv` client sets no timeout on its requests; a stalled server must not stall the agent."""

    def __init__(self, timeout: float) -> None:
        super().__init__()
        self.timeout = timeout

    def request(self, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        kwargs.setdefault("timeout", self.timeout)
        return super().request(*args, **kwargs)


class ArxivSearchAction(BaseAction):
    """Search arXiv.org for scientific papers. Useful for questions about physics, mathematics, computer
    science, quantitative biology, quantitative finance, statistics, electrical engineering and economics."""

    def __init__(
        self,
        base_url: str = "https://export.arxiv.org/api/query",
        timeout: float = 15.0,
        max_results: int = 3,
        summary_chars: int = 600,
        enable: bool = True,
    ) -> None:
        # The name InternLM2 saw in Lagent's demo, so the model calls it as it learned to.
        description = dict(self.__tool_description__, name="ArxivSearch")
        super().__init__(description=description, parser=JsonParser, enable=enable)
        self.base_url = base_url
        self.timeout = timeout
        self.max_results = max(1, min(max_results, 10))
        self.summary_chars = summary_chars
        self.papers: list[Paper] = []  # everything found in this agent run

    def search(self, query: str) -> list[Paper]:
        import arxiv

        client = arxiv.Client(page_size=self.max_results, delay_seconds=0.0, num_retries=1)
        client.query_url_format = self.base_url + "?{}"
        client._session = _TimeoutSession(self.timeout)  # no public hook for a timeout in arxiv 2.x/3.x
        found = []
        for r in client.results(arxiv.Search(query=query[:300], max_results=self.max_results)):
            found.append(
                Paper(
                    title=" ".join(r.title.split()),
                    url=r.entry_id,
                    authors=[a.name for a in r.authors],
                    published=r.published.date().isoformat() if r.published else "",
                    summary=" ".join(r.summary.split())[: self.summary_chars],
                )
            )
        return found

    @tool_api(explode_return=True)
    def get_arxiv_article_information(self, query: str) -> ActionReturn:
        """Search arXiv and return the title, authors, date, link and abstract of the best matches.

        Args:
            query (str): the search query, in English

        Returns:
            dict: article information
                * content (str): the papers found
        """
        try:
            papers = self.search(query)
        except Exception as exc:  # network down, timeout, HTTP error, malformed feed
            log.info("arXiv search failed: %s", exc)
            return ActionReturn(
                args={"query": query},
                type=self.name,
                state=ActionStatusCode.HTTP_ERROR,
                errmsg=f"arXiv search failed ({type(exc).__name__}); try again later",
            )
        self.papers += papers
        if not papers:
            content = "No arXiv papers were found for this query."
        else:
            content = "\n\n".join(
                f"Title: {p.title}\nAuthors: {', '.join(p.authors)}\nPublished: {p.published}\n"
                f"Link: {p.url}\nSummary: {p.summary}"
                for p in papers
            )
        return ActionReturn(
            args={"query": query},
            type=self.name,
            state=ActionStatusCode.SUCCESS,
            result=[{"type": "text", "content": content}],
        )


def build_plugins(settings: Any) -> list[BaseAction]:
    """The plugin tools this deployment offers (the interpreter is always there, separately)."""
    plugins: list[BaseAction] = []
    if settings.agent_arxiv:
        plugins.append(
            ArxivSearchAction(
                base_url=settings.arxiv_base_url, timeout=settings.arxiv_timeout, max_results=settings.arxiv_max_results
            )
        )
    key = settings.serper_api_key.get_secret_value()
    if key:
        from lagent.actions import GoogleSearch

        plugins.append(GoogleSearch(api_key=key, timeout=10))
    return plugins


def build_executors(
    sandbox: Sandbox, settings: Any, *, python: bool = True, files: Mapping[str, bytes] | None = None
) -> tuple[ActionExecutor | None, ActionExecutor | None]:
    """The interpreter (None with `python=False`: the sandbox cannot isolate code here, so the model is not
    even offered it) with the task's `files` in its working directory, and the plugin tools (None when there
    are none)."""
    interpreter = ActionExecutor(actions=[SandboxedPython(sandbox, files=files)]) if python else None
    plugins = build_plugins(settings)
    return interpreter, (ActionExecutor(actions=plugins) if plugins else None)
