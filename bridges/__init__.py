"""Chat frontends (Telegram, Discord) over the gateway engine."""
