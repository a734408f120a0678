"""The WSGI entry point: ``gunicorn wsgi:app``, ``flask --app wsgi ...``."""

from credits_service import create_app

app = create_app()
