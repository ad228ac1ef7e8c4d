"""The HTTP face: parse, authorise, render. Money moves only through the engine."""

from micropay.api.app import create_app
from micropay.api.settings import RateLimit, Settings

__all__ = ["RateLimit", "Settings", "create_app"]
