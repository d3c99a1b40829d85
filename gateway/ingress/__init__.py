"""Thin edges: smtp.py (the aiosmtpd handler) and sms.py (the Twilio webhooks). Cheap checks, a named
status code, and hand-off to the intake pipeline."""
