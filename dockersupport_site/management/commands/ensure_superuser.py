"""`python manage.py ensure_superuser`: make sure an admin can log in (used by `make run`).

Takes DJANGO_SUPERUSER_USERNAME / DJANGO_SUPERUSER_PASSWORD (and DJANGO_SUPERUSER_EMAIL) when
set; otherwise, when no superuser exists yet, creates `admin` with a generated password that is
printed once.
"""

import os
import secrets

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Create the admin user of `make run` if there is none."

    def handle(self, *args, **options):
        User = get_user_model()
        username = os.environ.get("DJANGO_SUPERUSER_USERNAME")
        password = os.environ.get("DJANGO_SUPERUSER_PASSWORD")
        email = os.environ.get("DJANGO_SUPERUSER_EMAIL", "")
        if username and password:
            user, created = User.objects.get_or_create(username=username, defaults={"email": email})
            user.is_staff = user.is_superuser = True
            user.set_password(password)
            user.save()
            verb = "Created" if created else "Updated"
            self.stdout.write(f"{verb} the admin user '{username}' (password from DJANGO_SUPERUSER_PASSWORD).")
            return
        if User.objects.filter(is_superuser=True).exists():
            return
        username = username or "admin"
        password = secrets.token_urlsafe(12)
        User.objects.create_superuser(username=username, email=email, password=password)
        self.stdout.write(self.style.WARNING(
            f"Created the admin user '{username}' with password: {password}\n"
            "It is shown only this once; change it in the admin (or set DJANGO_SUPERUSER_PASSWORD)."
        ))
