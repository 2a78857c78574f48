"""AUTOMATIC1111 sdapi front end (a Router mixin)."""


class A1111Routes:
    pass


def a1111_error(exc):
    from serve_app.http_errors import error_response

    return error_response(exc)
