"""deploytasks: zero-downtime deploys of Compose and gunicorn apps to your own servers over SSH."""

__version__ = "0.2.0"
