"""A local Discord-compatible server for end-to-end tests of the bot with the real discord.py client.

See docs/testing.md.  `FakeDiscord` is the aiohttp server, `Harness` the test-side API, `World` the state.
"""

from .harness import Harness
from .server import Call, FakeDiscord
from .state import Channel, Guild, Interaction, Message, User, World

__all__ = ["Call", "Channel", "FakeDiscord", "Guild", "Harness", "Interaction", "Message", "User", "World"]
