"""The management plane's web app: the query API and the dashboard (the app itself is :mod:`.app`)."""

from .app import create_app, serve_ui

__all__ = ["create_app", "serve_ui"]
