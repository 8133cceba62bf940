"""Lantern: which AI tools an organisation uses, what they cost, where its data goes."""

__version__ = "0.1.0"
