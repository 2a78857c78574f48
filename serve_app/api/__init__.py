"""The HTTP contract: request/response schemas of every front end, error mapping, mode catalog. No Ray."""
