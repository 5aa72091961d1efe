"""What every admin page shares: status badges by meaning, long values cut with the whole in the title,
help texts whose <placeholders> show, and the site-wide stylesheet on every page."""

import pytest
from django.urls import reverse

from dockersupport_site.admin_display import cut, status_badge, tone_of


@pytest.mark.parametrize(("value", "tone"), [
    ("succeeded", "ok"), ("deleted", "ok"), ("running", "running"), ("pending", "waiting"),
    ("failed", "failed"), ("error", "failed"), ("lost", "failed"), ("Failed", "failed"), ("whatever", "neutral"),
])
def test_a_status_gets_the_tone_of_its_meaning(value, tone):
    assert tone_of(value) == tone


def test_a_badge_escapes_its_label():
    html = status_badge("failed", label="<b>x</b>")
    assert 'class="ds-badge ds-badge-failed"' in html and "&lt;b&gt;x&lt;/b&gt;" in html


def test_a_long_value_is_cut_on_screen_and_whole_in_its_title():
    reference = "127.0.0.1:5000/" + "a" * 90 + ":<tag>"
    html = cut(reference)
    assert html.count("127.0.0.1:5000/" + "a" * 90 + ":&lt;tag&gt;") == 2  # shown (cut by CSS) and in the title
    assert cut("") == "—"


@pytest.mark.django_db
def test_help_texts_keep_their_placeholders_and_every_page_loads_the_stylesheet(admin_client):
    page = admin_client.get(reverse("admin:connections_connection_add")).content.decode()
    assert "&lt;registry ID&gt;.dkr.ecr.&lt;region&gt;.amazonaws.com" in page
    assert "dockersupport/admin.css" in page
    assert "dockersupport/admin.css" in admin_client.get(reverse("admin:index")).content.decode()
