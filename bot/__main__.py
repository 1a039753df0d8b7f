"""`python -m bot` — the Discord bot, or the console when no DISCORD_TOKEN is set.

python -m bot            Discord bot (console mode if DISCORD_TOKEN is empty)
python -m bot console    chat in the terminal (reads stdin; pipe lines in to script it)
python -m bot sync       register the slash commands with Discord now, then exit
python -m bot status     workers, queue, dead letters, Redis memory (--json for scripts)
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from models.logs import setup_logging
from models.settings import get_settings

NO_TOKEN = (
    "No DISCORD_TOKEN set — starting console mode. To run on Discord, create an application at\n"
    "https://discord.com/developers/applications, copy its bot token into .env (see README), then `make run`."
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bot", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", nargs="?", default="run", choices=["run", "console", "sync", "status"])
    parser.add_argument("--session", default="default", help="console conversation name")
    parser.add_argument("--json", action="store_true", help="status: print JSON")
    args = parser.parse_args(argv)
    settings = get_settings()
    if args.command == "status":
        from .status import run_status

        return asyncio.run(run_status(settings, as_json=args.json))
    setup_logging(settings, sys.stderr)  # LOG_FORMAT text|json, job ids, secrets redacted
    if args.command == "run" and settings.discord_token is None:
        print(NO_TOKEN, file=sys.stderr)
        args.command = "console"
    if args.command == "console":
        if settings.log_level.upper() == "INFO":
            logging.getLogger().setLevel(logging.WARNING)  # keep the chat readable
        return asyncio.run(_console(settings, args.session))
    from .client import run_discord

    return run_discord(settings, sync_only=args.command == "sync")


async def _console(settings, session: str) -> int:
    from .console import run_console
    from .runtime import Runtime

    runtime = await Runtime.start(settings)
    try:
        await run_console(runtime, session)
    finally:
        await runtime.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
