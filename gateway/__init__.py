"""Secure messaging gateway for medical practices."""
