"""Claude Max Gateway: the real Claude Code CLI behind an OpenAI endpoint, chat bots and cron."""

__version__ = "0.1.0"
