"""Served model kinds, chosen by the config's platform/backend (see `serving.repository`)."""
