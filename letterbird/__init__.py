"""Letterbird: a complete e-mail system."""
