"""Built-in reasoning-model simulator (OpenAI and Anthropic wire formats)."""

from metering.simulator.app import create_app

__all__ = ["create_app"]
