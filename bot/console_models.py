"""Console `/model`: list the deployment's chat models (`CHAT_MODELS`) and choose the one the console uses.

What Discord's `/model` (bot/cogs/models.py) does per server or channel, the console does for itself: the
choice is stored with the other overrides (handlers/overrides.py) in the console's own scope, `guild:0` —
"no server", which no Discord request reads (Discord's `/settings` and `/model` are server-only, and a DM's
request reads no scope) — and every console request (chat, `/file`, `/agent`, `/image`, `/article`) is made
in that scope (`CONSOLE_GUILD`), so its jobs carry the chosen model.  No admin check: whoever runs the
console runs the deployment.
"""

from __future__ import annotations

from typing import Protocol

from handlers.overrides import MODEL_FIELD, ConfError, ConfStore
from models import routing

from .runtime import Runtime

CONSOLE_GUILD = 0  # the console's settings scope (see the module docstring)
USAGE = "Usage: /model [NAME | --clear]"


class Console(Protocol):
    """What this command uses of the console session (bot/console.py's `Console`)."""

    runtime: Runtime

    def print(self, text: str = "", *, end: str = "\n") -> None: ...


async def served_models(runtime: Runtime) -> set[str]:
    """The models a live worker serves now, and the embedded worker's (its first heartbeat may be pending)."""
    served = {model for info in await runtime.bus.alive_workers() for model in info.models}
    worker = getattr(runtime, "worker", None)
    return served | set(getattr(worker, "models", None) or ())


async def show(runtime: Runtime) -> str:
    """The model in effect here, where the choice comes from, and each configured model, served or not."""
    chosen = (await runtime.overrides.get_scope(ConfStore.scope(guild=CONSOLE_GUILD))).get(MODEL_FIELD, "")
    effective = await runtime.overrides.effective(guild=CONSOLE_GUILD)
    source = "chosen here" if chosen == effective.model else "the default"
    served = await served_models(runtime)
    lines = [f"Chat model for this console: {effective.model} ({source}).", "Configured models:"]
    for spec in routing.configured(runtime.settings):
        mark = "*" if spec.name == effective.model else " "
        state = "served" if spec.name in served else "no worker serves it right now"
        lines.append(f" {mark} {spec.describe()} — {state}")
    return "\n".join(lines)


async def model_command(console: Console, rest: str) -> None:
    """`/model` lists; `/model NAME` chooses; `/model --clear` goes back to the default."""
    runtime = console.runtime
    settings = runtime.settings
    name = rest.strip()
    if not routing.routed(settings):
        console.print(f"Only one chat model is configured here: {routing.single_model_name(settings)}.")
        return
    scope = ConfStore.scope(guild=CONSOLE_GUILD)
    if not name:
        console.print(await show(runtime))
        return
    if name in ("--clear", "-c", "default"):
        await runtime.overrides.clear(scope, MODEL_FIELD)
        console.print("Forgot the model chosen for this console.\n" + await show(runtime))
        return
    if " " in name:
        console.print(USAGE)
        return
    try:
        await runtime.overrides.set_model(scope, name)
    except ConfError:
        names = ", ".join(routing.names(settings))
        console.print(f"{name[:100]!r} is not one of the configured models: {names}.")
        return
    text = f"This console now uses {name}."
    if name not in await served_models(runtime):
        text += f"\n⚠️ No worker serves {name} right now: answers will say so until one starts."
    console.print(text)
