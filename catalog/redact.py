"""The one place config and URLs are made safe to show: passwords, keys and tokens become ``***``.

Everything that leaves a process for somewhere others read goes through here: MLflow params and
``config.json`` (:mod:`catalog.tracking`), the catalog's ``runs.config``, flow parameters and
summaries, and log records (:class:`RedactingFilter`). Two rules:

* a URL's password (``postgresql://user:secret@host/db`` → ``postgresql://user:***@host/db``), and a
  ``password=``/``token=``/``key=`` query parameter;
* the value of any mapping key that names a secret (``password``, ``secret``, ``token``,
  ``api_key``, ``credentials``, ...), whatever it holds.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

MASK = "***"
# Mapping keys whose values are secrets. Digests of keys are not secrets (``api_key_hashes``).
_SECRET_KEY = re.compile(
    r"(^|[._-])(password|passwd|pwd|secret|secret_key|token|auth_token|api_key|apikey|access_key|"
    r"private_key|credentials?|auth_string)($|[._-])",
    re.I,
)
# scheme://user:password@ — the password part, up to the last '@' before the host.
_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/?#@\s]*:)(?P<pw>[^@\s/]+)(?=@)", re.I)
_QUERY_SECRET = re.compile(
    r"(?P<head>[?&](?:password|passwd|token|secret|key|api_key)=)(?P<val>[^&#\s]+)", re.I
)
# Our API keys (catalog/keys.py) and any Bearer credential, wherever they appear in text.
_API_KEY = re.compile(r"\bns-[A-Za-z0-9_-]{20,}")
_BEARER = re.compile(r"(?P<head>\bBearer\s+)(?P<val>[^\s'\"]+)", re.I)


def redact_text(text: str) -> str:
    """``text`` with every URL password, secret query parameter, API key and Bearer credential masked."""
    if "ns-" in text:
        text = _API_KEY.sub("ns-" + MASK, text)
    if "earer" in text:
        text = _BEARER.sub(lambda m: m["head"] + MASK, text)
    if "://" not in text and "=" not in text:
        return text
    text = _URL_PASSWORD.sub(lambda m: m["head"] + MASK, text)
    return _QUERY_SECRET.sub(lambda m: m["head"] + MASK, text)


def redact_url(url: str) -> str:
    """A URL safe to print or store: its password (and secret query parameters) masked."""
    return redact_text(url)


def is_secret_key(name: str) -> bool:
    """Whether a mapping key (``tracking.catalog_password``, ``AWS_SECRET_ACCESS_KEY``) names a secret."""
    return bool(_SECRET_KEY.search(name)) and not name.lower().endswith(("_hashes", "_file", "_path"))


def redact(value: Any) -> Any:
    """A copy of ``value`` (mappings, lists, strings) with every secret masked; other values as they are."""
    if isinstance(value, Mapping):
        return {k: (MASK if is_secret_key(str(k)) and v else redact(v)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return redact_text(str(value))  # str(): a plain str, whatever subclass came in
    return value


def secrets_in(value: Any, where: str = "") -> list[str]:
    """The dotted keys under which ``value`` holds a secret (what :func:`redact` would mask)."""
    out: list[str] = []
    if isinstance(value, Mapping):
        for k, v in value.items():
            key = f"{where}.{k}" if where else str(k)
            if is_secret_key(str(k)) and v:
                out.append(key)
            else:
                out += secrets_in(v, key)
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            out += secrets_in(v, f"{where}[{i}]")
    elif isinstance(value, str) and redact_text(value) != value:
        out.append(where or "(value)")
    return out


class RedactingFilter(logging.Filter):
    """Masks secrets in a log record's message (formatted once, here) and exception text."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string is the logging module's to report
            return True
        clean = redact_text(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        return True


def install_log_redaction(*loggers: logging.Logger) -> None:
    """Add one :class:`RedactingFilter` to every handler of ``loggers`` (default: the root logger's)."""
    for logger in loggers or (logging.getLogger(),):
        for handler in logger.handlers:
            if not any(isinstance(f, RedactingFilter) for f in handler.filters):
                handler.addFilter(RedactingFilter())
