"""Storage: the engine and sessions (engine.py), the tables (tables.py), the key store (keystore.py)."""
