"""The FastAPI app every HTTP route of the Router is declared on (native and compatibility APIs)."""

from fastapi import FastAPI

import serve_app

http_app = FastAPI(
    title="Dream Lab",
    version=serve_app.__version__,
    description="Stable Diffusion from many checkpoints at once: native API, OpenAI images API, "
    "AUTOMATIC1111 sdapi. Errors are JSON: {\"error\": {\"type\", \"message\", \"param\"}}.",
)
