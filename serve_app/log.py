"""The ingress logger's name: a child of ``ray.serve``, so inside a replica our lines land in
Serve's replica log with its request id, and outside Serve (tests) they behave as usual."""

LOGGER = "ray.serve.serve_app"
