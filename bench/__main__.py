"""`python -m bench [NAME ...]`: run the registered benches one after another and print one table."""

from __future__ import annotations

import asyncio
import importlib
import sys

from bench import REGISTRY
from bench.common import Result, parse_options, report


def main(argv: list[str] | None = None) -> int:
    opts, args = parse_options(argv, names=list(REGISTRY))
    unknown = [name for name in args.benches if name not in REGISTRY]
    if unknown:
        print(f"unknown bench(es): {', '.join(unknown)}; known: {', '.join(REGISTRY)}", file=sys.stderr)
        return 2
    results: list[Result] = []
    for name in args.benches or list(REGISTRY):
        module = importlib.import_module(REGISTRY[name])
        print(f"running {name} …", file=sys.stderr, flush=True)
        try:
            results += asyncio.run(module.run(opts))
        except Exception as exc:  # one broken bench must not hide the others' figures
            results.append(Result(name, "error", float("nan"), note=f"{type(exc).__name__}: {exc}"[:120], ok=False))
    report(results, args)
    if any(r.metric == "error" for r in results):
        return 1  # a bench crashed
    return 1 if args.strict and any(r.ok is False for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
