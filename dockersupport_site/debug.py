"""What Django's error pages and error e-mails may show (DEFAULT_EXCEPTION_REPORTER_FILTER)."""

import re

from django.views.debug import SafeExceptionReporterFilter

# `scheme://user:password@host...`: the userinfo of a URL, up to the last `@` before the path. The
# password is whatever follows the first `:` in it (it may itself hold `:` or an unescaped `@`).
_URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^:/?#@\s]*:)(?P<password>[^/?#\s]*)@")


class UrlPasswordFilter(SafeExceptionReporterFilter):
    """Django's filter, which hides settings by their name (KEY, SECRET, PASS...), and also the
    password inside any URL, whatever the setting is called: CELERY_BROKER_URL,
    CELERY_RESULT_BACKEND and CACHES' LOCATION hold `redis://:password@host` and their names say
    nothing secret. The same applies to request.META (runserver puts the process's environment
    there, DATABASE_URL included) and to the string variables of traceback frames.
    """

    def cleanse_setting(self, key, value):
        # Django recurses into dicts, lists and tuples through this method, so each string is seen.
        return self.cleanse_url_passwords(super().cleanse_setting(key, value))

    def cleanse_special_types(self, request, value):
        return self.cleanse_url_passwords(super().cleanse_special_types(request, value))

    def cleanse_url_passwords(self, value):
        if isinstance(value, str) and "://" in value:
            return _URL_PASSWORD.sub(lambda m: f"{m['head']}{self.cleansed_substitute}@", value)
        return value
