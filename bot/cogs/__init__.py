"""Discord features, one extension (Cog) each: chat and admin always; agent and images when present."""
