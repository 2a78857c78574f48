"""The Router: the application's HTTP ingress (FastAPI on Serve). It never touches torch.

It joins the front ends (native + operations + tasks, OpenAI images API, AUTOMATIC1111 sdapi, the
playground page), each a class of routes over `RouterCore`, and hands them to Serve with the FastAPI app
they are declared on.
"""

from __future__ import annotations

from ray import serve

from deployments.a1111_routes import A1111Routes
from deployments.http_app import http_app
from deployments.native_routes import NativeRoutes
from deployments.openai_routes import OpenAIRoutes
from deployments.playground_routes import PlaygroundRoutes
from deployments.task_routes import TaskRoutes


class Router(NativeRoutes, OpenAIRoutes, A1111Routes, TaskRoutes, PlaygroundRoutes):
    """HTTP ingress: `Router(modes, model_root, mode_handles, registry, access, fair_share, task_store, tasks)`."""


# Applied at import so every replica process (which re-imports this module) wires the routes to the class.
RouterIngress = serve.ingress(http_app)(Router)
