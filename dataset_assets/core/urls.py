"""Building download URLs from a catalog's `base_url`."""
from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def url_below(base_url: str, relative: str) -> str:
    """`relative` appended to the path of `base_url`; a query (a container's SAS token, a CDN token) stays last."""
    parts = urlsplit(base_url)
    return urlunsplit(parts._replace(path=f"{parts.path.rstrip('/')}/{relative}"))
