"""Logging set-up: stderr and an optional rotating file, secrets redacted."""

from __future__ import annotations

import logging
import logging.handlers
import sys

from gateway.config import APP_NAME, Settings
from gateway.errors import ConfigError

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
_HANDLER_PREFIX = f"{APP_NAME}."


class RedactSecrets(logging.Filter):
    """Replaces every secret value in a record's message (and traceback) with ``***``."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, "***")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: let the handler report it
            return True
        redacted = self.redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True


def setup_logging(settings: Settings) -> None:
    """Log to stderr (and ``logging.file`` if set) at ``logging.level``, secrets redacted.

    Calling it again replaces the handlers it installed before.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if (handler.get_name() or "").startswith(_HANDLER_PREFIX):
            root.removeHandler(handler)
            handler.close()

    formatter = logging.Formatter(LOG_FORMAT)
    redact = RedactSecrets(settings.secrets())
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    handlers[0].set_name(_HANDLER_PREFIX + "stderr")
    log_file = settings.logging.file_path
    if log_file is not None:
        try:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            file_handler: logging.Handler = logging.handlers.RotatingFileHandler(
                log_file,
                maxBytes=settings.logging.max_bytes,
                backupCount=settings.logging.backup_count,
                encoding="utf-8",
            )
        except OSError as exc:
            raise ConfigError(f"logging.file: cannot open {log_file}: {exc}") from exc
        file_handler.set_name(_HANDLER_PREFIX + "file")
        handlers.append(file_handler)
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.addFilter(redact)
        root.addHandler(handler)
    root.setLevel(settings.logging.level)
