"""Agents as the server sees them: their tokens and builds' tokens, what they report, the jobs they pull."""
