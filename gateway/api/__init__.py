"""The OpenAI-compatible HTTP API: a thin frontend over the engine.

* :func:`create_app` builds the aiohttp application (``/health``, ``/openapi.json``,
  ``/v1/models``, ``/v1/models/{id}``, ``/v1/chat/completions``, and the audio endpoints
  ``/v1/audio/transcriptions`` and ``/v1/audio/speech`` of :mod:`gateway.api.audio`).
* :class:`ApiConfig` is what it needs from the settings; :func:`api_config_from_settings`
  builds it from ``settings.server`` and refuses a non-loopback bind without API keys.

Every request first passes :mod:`gateway.api.guard` (the Host it is addressed to, the web
page it comes from, CORS for pages the owner allows, and each endpoint's Content-Type).
Request conversion lives in :mod:`gateway.api.convert`, the conversation rules in
:mod:`gateway.api.conversation`, the handlers and the error table in :mod:`gateway.api.routes`.
"""

from gateway.api.config import ApiConfig, api_config_from_settings, check_bind
from gateway.api.routes import create_app
from gateway.config import is_loopback_host as is_loopback

__all__ = [
    "ApiConfig",
    "api_config_from_settings",
    "check_bind",
    "create_app",
    "is_loopback",
]
