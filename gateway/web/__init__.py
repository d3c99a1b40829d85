"""HTTP: the ASGI app (app.py) with the Twilio webhooks, the portal, the JSON API, health and metrics."""
