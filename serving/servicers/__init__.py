"""Thin protocol adapters: validate the wire message, convert, call the dataplane, convert back."""
