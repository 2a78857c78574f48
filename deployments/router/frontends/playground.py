"""The web playground: `GET /` (the page) and its static files (`GET /static/{name}`), shipped in
`serve_app/static/` and served as they are (no build step, no external URL: the page works offline).

The page is public (no key needed to load it); every API call it makes carries the key the user typed.
None of these routes is in the OpenAPI schema. Static files are served from a fixed allow-list only, so
no request names any other file (no path traversal).
"""

from __future__ import annotations

import html
import logging
from functools import cache
from importlib import resources

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from starlette.exceptions import HTTPException

from deployments.router.http_app import OffLoopJsonRoute

logger = logging.getLogger(__name__)

STATIC_PACKAGE = "serve_app"
STATIC_FOLDER = "static"
# Every file the page may load, with its content type: nothing else under the folder is served.
STATIC_FILES: dict[str, str] = {
    "playground.css": "text/css; charset=utf-8",
    "api.js": "text/javascript; charset=utf-8",
    "history.js": "text/javascript; charset=utf-8",
    "vram.js": "text/javascript; charset=utf-8",
    "results.js": "text/javascript; charset=utf-8",
    "control.js": "text/javascript; charset=utf-8",
    "playground.js": "text/javascript; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
BASE_MARKER = "__DREAMLAB_BASE__"
# The page never caches stale code across an upgrade; the files are small.
_HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
_PAGE_HEADERS = {**_HEADERS, "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; "
                 "style-src 'self'; script-src 'self'; connect-src 'self' blob:; object-src 'none'; base-uri 'self'"}


@cache
def static_bytes(name: str) -> bytes:
    """The bytes of static file `name` (one of `STATIC_FILES`), read once per process."""
    return resources.files(STATIC_PACKAGE).joinpath(STATIC_FOLDER, name).read_bytes()


def page_html(root_path: str) -> str:
    """index.html with its `<base href>` set to where the app is mounted, so the page's relative URLs
    (static files, `v1/...`) work under any Serve route prefix."""
    base = html.escape(root_path.rstrip("/") + "/", quote=True)
    return static_bytes("index.html").decode("utf-8").replace(BASE_MARKER, base)

router = APIRouter(route_class=OffLoopJsonRoute)


@router.get("/", include_in_schema=False, response_class=HTMLResponse)
async def playground_page(request: Request) -> HTMLResponse:
    """The playground page (public: its API calls carry the key the user gives it)."""
    return HTMLResponse(page_html(request.scope.get("root_path", "")), headers=_PAGE_HEADERS)


@router.get("/static/{name}", include_in_schema=False)
async def playground_static(name: str) -> Response:
    """One of the page's files, by its name on the allow-list; anything else is a 404."""
    media_type = STATIC_FILES.get(name)
    if media_type is None:
        raise HTTPException(status_code=404, detail=f"no static file {name[:64]!r}")
    try:
        data = static_bytes(name)
    except OSError:
        logger.error("static file %s is on the allow-list but not in the package", name)
        raise HTTPException(status_code=404, detail=f"no static file {name!r}") from None
    return Response(data, media_type=media_type, headers=_HEADERS)
