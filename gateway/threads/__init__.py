"""Conversations: open a thread, post a message (portal, API, CLI, intake), read a thread (decrypt + audit)."""
