"""The Router: the application's HTTP ingress (FastAPI on Serve). It never touches torch.

It joins the front ends (native + operations, OpenAI images API, AUTOMATIC1111 sdapi), each a class of
routes over `RouterCore`, and hands them to Serve with the FastAPI app they are declared on.
"""

from __future__ import annotations

from ray import serve

from deployments.a1111_routes import A1111Routes
from deployments.http_app import http_app
from deployments.native_routes import NativeRoutes
from deployments.openai_routes import OpenAIRoutes


class Router(NativeRoutes, OpenAIRoutes, A1111Routes):
    """HTTP ingress: `Router(modes, model_root, mode_handles, registry)`."""


# Applied at import so every replica process (which re-imports this module) wires the routes to the class.
RouterIngress = serve.ingress(http_app)(Router)
