"""Where rerankq's servers may listen. Shared by the gateway and Flower (and light: it imports
no web framework, so `rerankq flower` needs only the flower extra)."""

from __future__ import annotations

import ipaddress


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve to anything
