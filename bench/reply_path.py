"""Issue 12: P1 alone — the reply path through the fake Discord with an instant engine, at the channel counts
given (`python -m bench reply_path --p1-levels 1,32`; the default is bench/discord_path.P1_LEVELS).

The full P1–P4 run is `python -m bench production`; this one takes about a minute, so before/after figures
of a change to the reply path can be taken side by side, alternating, on a shared machine.
"""

from __future__ import annotations

from bench.common import Options, Result, main_for, private_redis


async def run(opts: Options) -> list[Result]:
    from bench.discord_path import p1_overhead

    with private_redis() as url:
        return await p1_overhead(opts, url)


if __name__ == "__main__":
    raise SystemExit(main_for(run))
