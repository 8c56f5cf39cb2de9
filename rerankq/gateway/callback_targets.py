"""Where job callbacks may go: public addresses only, unless the operator allows private ones.

A callback makes the gateway send an HTTP request to a URL the client chose. Without this check
a client could aim it at the cluster's own services or a cloud metadata endpoint
(169.254.169.254): server-side request forgery. The host is resolved and every address it
resolves to must be global; the check runs when the job is accepted and again before each
delivery (a name may resolve elsewhere later). A name re-pointed between that check and the
connection is not caught; deployments that need that guarantee send callbacks through an egress
proxy.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

from rerankq.errors import InvalidRequest

ALLOW_HINT = "RERANKQ_CALLBACK_ALLOW_PRIVATE=true allows them"


async def check_callback_url(url: str, allow_private: bool) -> None:
    """Raises InvalidRequest("callback_url", ...) for a URL that reaches a non-public address."""
    if allow_private:
        return
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, parts.port or 443, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise InvalidRequest("callback_url", "must name a host that resolves", f"{host!r}: {e}") from e
    for address in sorted({str(info[4][0]) for info in infos}):
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if not ip.is_global:
            raise InvalidRequest(
                "callback_url",
                f"must reach a public address; private, loopback, link-local and reserved ones are refused "
                f"({ALLOW_HINT})",
                f"{host} is {ip}",
            )
