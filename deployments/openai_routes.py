"""OpenAI images API front end (a Router mixin)."""


class OpenAIRoutes:
    pass
