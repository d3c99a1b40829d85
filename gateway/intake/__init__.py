"""Inbound messages on their way in: parse, authenticate the sender, route to a thread, store."""
