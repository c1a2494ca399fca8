"""The replica's inter-deployment gRPC server on its Ray node's address instead of every interface.

Ray Serve 2.60 starts a gRPC server in each replica (for calls between deployments) and binds it
to ``[::]:0``, with no setting. Serve's routers reach it at the replica's ``node_ip:port``, so binding
that address instead changes nothing for them; on the local stack the node address is 127.0.0.1,
which keeps the replica off the network. The replica's constructor (ours) runs before Serve starts
that server, so :func:`bind_to_node_address`, called from it, swaps the wildcard for the node
address in the helper Serve binds through.
"""

from __future__ import annotations

import logging
from typing import Any

# Ray is imported inside the functions that use it, not here: it takes a second or more to
# import, and not every user of this module needs it.

log = logging.getLogger(__name__)

_WILDCARD = "[::]:"


def bind_to_node_address() -> str | None:
    """Make this process's replica gRPC server bind the Ray node's address.

    Returns:
        The host it will bind, or None when this Ray binds differently (a warning says so).
    """
    import ray

    try:
        from ray.serve._private import replica as replica_module

        bind = replica_module.add_port_to_grpc_server
    except (ImportError, AttributeError):
        log.warning("this Ray Serve binds its replica gRPC server differently; it keeps Ray's address")
        return None
    host = ray.util.get_node_ip_address()
    host = f"[{host}]" if ":" in host else host
    if getattr(bind, "_nightshift_host", None) == host:
        return host
    original = getattr(bind, "_nightshift_original", bind)

    def add_port(server: Any, address: str) -> int:
        if address.startswith(_WILDCARD):
            address = host + ":" + address[len(_WILDCARD) :]
        return original(server, address)

    add_port._nightshift_host = host  # type: ignore[attr-defined]
    add_port._nightshift_original = original  # type: ignore[attr-defined]
    replica_module.add_port_to_grpc_server = add_port
    return host
