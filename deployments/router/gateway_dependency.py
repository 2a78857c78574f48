"""How a route gets the Gateway: `gw: GatewayDep` in its signature (a FastAPI dependency).

`ingress.create_http_app(gateway)` puts the gateway on the app's state; Serve serves that very app (built
in the replica by `RouterIngress.__serve_build_asgi_app__`), so every request finds it there.
"""

from __future__ import annotations

from typing import Annotated, cast

from fastapi import Depends, Request

from deployments.router.gateway import Gateway


def gateway_of(request: Request) -> Gateway:
    return cast(Gateway, request.app.state.gateway)


async def get_gateway(request: Request) -> Gateway:  # async: FastAPI runs a sync dependency in a thread
    return gateway_of(request)


GatewayDep = Annotated[Gateway, Depends(get_gateway)]
