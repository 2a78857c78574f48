"""Request and response bodies of every front end, as `/openapi.json` shows them."""
