"""The Lagent agent behind `/agent`: sandboxed Python, arXiv search, optional web search.

`models/jobs/agent.py` is the `agent` job runner; `llm.EngineLLM` adapts the worker's engine to Lagent;
`actions` holds the tools.  See docs/agent.md.
"""
