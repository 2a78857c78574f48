"""The `dreamlab` command line: inspect, demo-models, generate, status, shutdown."""
