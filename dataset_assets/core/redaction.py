"""Redaction of secrets (signed query strings, URL credentials) before text leaves the process.

Signed URLs carry their credential in the query string, so every query string is treated as
secret: `https://h/p?Expires=1&Signature=abc` becomes `https://h/p?<redacted>`. User info in
the authority (`https://user:pass@h`) is dropped the same way. Servers may quote request headers
in their errors, so an `Authorization` value and a `Bearer` token are secret too.
"""
from __future__ import annotations

import logging
import re
from urllib.parse import urlsplit, urlunsplit

REDACTED = "<redacted>"

# Both patterns try each run of the characters they scan once, not once per position in it: errors redact
# whatever a user file holds, and retrying a scan at every position is quadratic in a long token or path.
# A URL's scheme begins at the first letter of its run (`prefix` keeps what precedes it).
# User info and query may hold `'`, `(` and `)` unencoded (RFC 3986 sub-delims), so neither ends at them: user info
# runs to its `@`, a query to whitespace, `"`, `<` or `>`. Quotes or brackets closing a URL-with-query are redacted too.
_URL_IN_TEXT = re.compile(
    r"(?<![a-zA-Z0-9+.-])(?P<prefix>[0-9+.-]*)"
    r"(?P<url>[a-zA-Z][a-zA-Z0-9+.-]*://(?:[^\s/?#@\"<>]*@)?[^\s'\"<>()\[\]{}?]+(?:\?[^\s\"<>]*)?)")
# A request target without scheme and host, as HTTP libraries log it: `"GET /p?Expires=1&Signature=abc HTTP/1.1"`.
# A path without a query matches too (and is kept as it is), so the scan resumes after it.
_TARGET_QUERY = re.compile(r"(?<![\w.~-])(?P<path>/[^\s?'\"<>]*)(?P<query>\?[^\s\"<>]+)?")
# Names count after any non-alphanumeric (so `access_token`, `client_secret`), and may be quoted (dict reprs, JSON);
# values may be bytes reprs, as in botocore's logged headers (`'X-Amz-Security-Token': b'...'`).
_SECRET_ASSIGNMENT = re.compile(
    r"(?i)(?<![a-z0-9])(aws_secret_access_key|aws_session_token|secret|token|password|signature|sig)"
    r"(['\"]?\s*[=:]\s*(?:b(?=['\"]))?['\"]?)[A-Za-z0-9/+=%._-]{6,}"
)

# An Authorization value is a scheme and credentials that may hold spaces, commas and escaped quotes (Digest, AWS
# SigV4): it goes whole, to its closing quote or the end of its line. A bearer token without the header name goes too.
_AUTHORIZATION = re.compile(
    r"(?i)(?<![a-z0-9-])((?:proxy-)?authorization['\"]?\s*[=:]\s*(?:b(?=['\"]))?['\"]?)(?:\\.|[^'\"\\\r\n])+")
_BEARER = re.compile(r"(?i)(?<![a-z0-9])(bearer\s+)[A-Za-z0-9._~+/=-]{6,}")


def may_be_signed(url: str) -> bool:
    """Whether `url` has a query string, where a signed URL carries its signature and expiry; a URL
    that cannot be parsed counts as signed."""
    try:
        return bool(urlsplit(url).query)
    except ValueError:
        return True


def _redact_unparsed(url: str) -> str:
    """`redact_url` of a URL `urlsplit` refuses (a malformed IPv6 host, say), cut by hand so errors can name it."""
    kept = re.split(r"[?#]", url, maxsplit=1)[0]
    scheme, separator, rest = kept.partition("://")
    if separator:
        authority, slash, path = rest.partition("/")
        kept = f"{scheme}://{authority.rpartition('@')[2]}{slash}{path}"
    return f"{kept}?{REDACTED}" if "?" in url else kept


def redact_url(url: str) -> str:
    """Return `url` without its query string values and without user info."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return _redact_unparsed(url)
    netloc = parts.netloc.rsplit("@", 1)[-1] if "@" in parts.netloc else parts.netloc
    query = REDACTED if may_be_signed(url) else ""
    redacted = urlunsplit((parts.scheme, netloc, parts.path, query, ""))
    # Text already redacted ("...?<redacted>") reaches here as "...?"; keep its "?" so it stays stable.
    return redacted + "?" if url.endswith("?") and not parts.query else redacted


def redact_text(text: str) -> str:
    """Redact every URL, every request target's query, every `token=...`-like assignment and every Authorization
    value or bearer token in free text."""
    redacted = _URL_IN_TEXT.sub(lambda m: m.group("prefix") + redact_url(m.group("url")), text)
    redacted = _TARGET_QUERY.sub(lambda m: f"{m.group('path')}?{REDACTED}" if m.group("query") else m.group(0),
                                 redacted)
    redacted = _SECRET_ASSIGNMENT.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", redacted)
    redacted = _AUTHORIZATION.sub(lambda m: f"{m.group(1)}{REDACTED}", redacted)
    return _BEARER.sub(lambda m: f"{m.group(1)}{REDACTED}", redacted)


class RedactingFilter(logging.Filter):
    """A logging filter that rewrites each record's message with `redact_text`."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        record.msg = redact_text(message)
        record.args = None
        return True


def get_logger(name: str) -> logging.Logger:
    """Return the named logger with a `RedactingFilter` attached (idempotent).

    Logger filters only see records logged on that very logger, so each module asks for its own
    redacting logger; the HTTP and S3 libraries' loggers that log request URLs or signed headers are covered on
    import.
    """
    logger = logging.getLogger(name)
    if not any(isinstance(f, RedactingFilter) for f in logger.filters):
        logger.addFilter(RedactingFilter())
    return logger


for _third_party in ("httpx", "httpcore", "urllib3.connectionpool", "urllib3.poolmanager", "urllib3.util.retry",
                     "botocore.endpoint", "botocore.auth", "botocore.parsers"):
    get_logger(_third_party)
