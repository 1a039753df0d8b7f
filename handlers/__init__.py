"""What a request means — chat, agent, image — independent of Discord and of any model."""
