"""Peer implementations, each run as a subprocess in its own virtual environment."""
