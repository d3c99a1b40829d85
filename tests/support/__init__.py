"""Test support: real services on loopback, fixtures' locations, stand-ins that speak real protocols."""
