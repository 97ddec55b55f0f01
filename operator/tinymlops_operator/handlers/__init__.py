"""Thin kopf handlers: read the world, call `logic/`, write status and events."""
