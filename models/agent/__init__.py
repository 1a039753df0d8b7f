"""The Lagent agent behind `/agent`: sandboxed Python, arXiv search, optional web search.

`runner.run_agent` is the `agent` job runner; `llm.EngineLLM` adapts the worker's engine to Lagent;
`actions` holds the tools.  See docs/agent.md.
"""
