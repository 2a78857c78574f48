"""The Router: the HTTP ingress (FastAPI on Serve), its gateway and front ends. Never touches torch."""
