"""Builds from start to finish: their registry credentials handed to their agent, login reports, close."""
