"""Control per request: ControlNet files (what they are, from their headers), the preprocessors that turn an
image into a control map, and how a loaded pipeline runs with ControlNets (diffusers' ControlNet pipelines)."""
