"""The Router: the application's HTTP ingress (FastAPI on Serve). It never touches torch.

It joins the front ends (native + operations + tasks, OpenAI images API, AUTOMATIC1111 sdapi, the
playground page), each a class of routes over `RouterCore`, and hands them to Serve with the FastAPI app
they are declared on.
"""

from __future__ import annotations

from ray import serve

from deployments.router.frontends.a1111 import A1111Routes
from deployments.router.frontends.native import NativeRoutes
from deployments.router.frontends.openai import OpenAIRoutes
from deployments.router.frontends.playground import PlaygroundRoutes
from deployments.router.frontends.tasks import TaskRoutes
from deployments.router.http_app import http_app


class Router(NativeRoutes, OpenAIRoutes, A1111Routes, TaskRoutes, PlaygroundRoutes):
    """HTTP ingress: `Router(modes, model_root, mode_handles, registry, access, fair_share, task_store, tasks)`."""


# Applied at import so every replica process (which re-imports this module) wires the routes to the class.
RouterIngress = serve.ingress(http_app)(Router)
