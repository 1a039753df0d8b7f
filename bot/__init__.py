"""The front ends: the discord.py bot and the console mode."""
