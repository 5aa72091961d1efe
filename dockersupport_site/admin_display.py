"""How the admin pages show values the same way everywhere: status badges and long values cut to fit.

The styles are in static/dockersupport/admin.css, which templates/admin/base_site.html loads on every page.
"""

from django.utils.html import format_html

# Every status word of the product, by what it means to the reader: done well, still going, waiting for
# something (or someone), gone wrong, or neither.
TONES = {
    "ok": {"succeeded", "success", "deleted", "ok", "connected", "passed", "done", "finished", "kept"},
    "running": {"running", "claimed", "started", "in progress", "logging in", "logging out"},
    "waiting": {"pending", "waiting", "queued", "owner uncertain", "uncertain", "not yet decided", "retrying",
                "disconnected", "partial", "dry run", "dry-run", "never connected"},
    "failed": {"failed", "error", "lost", "refused", "timed out", "timeout", "shortfall", "offline"},
}


def tone_of(value: str) -> str:
    word = str(value).strip().lower()
    return next((tone for tone, words in TONES.items() if word in words), "neutral")


def status_badge(value, label=None, tone: str | None = None):
    """A coloured badge for a status value (label: what is shown, the value's display name by default)."""
    return format_html('<span class="ds-badge ds-badge-{}">{}</span>', tone or tone_of(value),
                       value if label is None else label)


def cut(value, width_em: int = 26):
    """A long text shown on one line and cut with an ellipsis; the whole of it in its title (hover, copy)."""
    if value in (None, ""):
        return "—"
    return format_html('<span class="ds-cut ds-mono" style="max-width:{}em" title="{}">{}</span>',
                       width_em, value, value)
