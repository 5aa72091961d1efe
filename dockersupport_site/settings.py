"""Django settings for dockersupport, read from the environment by django-environ.

Every setting an operator may change is listed in the README's configuration table. Without any
environment the embedded defaults apply: SQLite under ./var and Celery tasks run in-process.
"""

import logging
from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
# `make run` writes generated keys to .env on first start; real deployments set the environment.
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

# --- Core --------------------------------------------------------------------------------------
DEBUG = env.bool("DEBUG", default=False)
# A production deployment must set SECRET_KEY; only DEBUG runs get an insecure stand-in.
SECRET_KEY = env.str("SECRET_KEY", default="insecure-development-key-set-SECRET_KEY" if DEBUG else None)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])
DATA_DIR = Path(env.str("DOCKERSUPPORT_DATA_DIR", default=str(BASE_DIR / "var")))

INSTALLED_APPS = [
    # The admin of members and staff; its modules load with the URLs (urls.py), not in every process.
    "dockersupport_site.admin_config.AdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",  # not rest_framework.authtoken: it stores tokens in clear (ours: connections.ApiToken)
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI and Redoc as static files: the API's docs load nothing from a CDN
    "django_celery_beat",
    "django_prometheus",
    "rules",
    "dockersupport_site",  # site-wide commands and templates
    "connections",
    "builds",
]

# Rights come from project roles (rules' predicates); passwords are checked by Django's backend,
# which grants nothing else (dockersupport_site/admin_site.py).
AUTHENTICATION_BACKENDS = [
    "rules.permissions.ObjectPermissionBackend",
    "dockersupport_site.admin_site.AuthenticationOnlyBackend",
]

MIDDLEWARE = [
    "dockersupport_site.health.HealthMiddleware",  # first: load balancers ask by address, over HTTP
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",  # the admin's static files, without DEBUG too
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

ROOT_URLCONF = "dockersupport_site.urls"
WSGI_APPLICATION = "dockersupport_site.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "dockersupport_site" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database ----------------------------------------------------------------------------------
DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{DATA_DIR / 'db.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The embedded mode has a web server, a worker and beat writing to one file: wait for locks.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        timeout=30, transaction_mode="IMMEDIATE", init_command="PRAGMA journal_mode=WAL;"
    )
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Cache (ECR tokens are shared through it; Redis in production) ------------------------------
CACHES = {"default": env.cache("CACHE_URL", default="locmemcache://")}

# --- Internationalisation and static files ------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = env.str("TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
# `collectstatic` gathers the admin's files here; whitenoise serves them (compressed) without DEBUG.
STATIC_ROOT = env.str("STATIC_ROOT", default=str(DATA_DIR / "static"))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# --- Security (production defaults; `check --deploy` is clean with DEBUG off) ------------------
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=not DEBUG)
SECURE_REDIRECT_EXEMPT = [r"^metrics$"]  # Prometheus scrapes each server directly (/health/ is answered earlier)
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=not DEBUG)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=not DEBUG)
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0 if DEBUG else 31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = not DEBUG
# Preloading is a commitment: browsers ship the list and keep HTTPS-only for the domain and every
# subdomain for months after it is withdrawn. Only the domain's owner can make it, so only on request.
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=False)
# W021 says "SECURE_HSTS_PRELOAD is not set"; it is off on purpose (above), so `check --deploy`
# stays clean with the defaults and a warning there still means something.
SILENCED_SYSTEM_CHECKS = ["security.W021"]
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if env.bool("BEHIND_TLS_PROXY", default=False) else None
# DEBUG error pages and error e-mails show the settings: hide passwords inside URLs too
# (CELERY_BROKER_URL, CACHES' LOCATION), not only settings whose name says PASS or KEY.
DEFAULT_EXCEPTION_REPORTER_FILTER = "dockersupport_site.debug.UrlPasswordFilter"

# --- Docker support ----------------------------------------------------------------------------
# Fernet keys, comma-separated, newest first: the first encrypts, all decrypt (key rotation).
DOCKERSUPPORT_ENCRYPTION_KEY = env.list("DOCKERSUPPORT_ENCRYPTION_KEY", default=[])
# Registry addresses, ECR endpoints and token services at link-local or cloud-metadata addresses
# (169.254.0.0/16, fe80::/10, fd00:ec2::254) are refused: that is where clouds hand out credentials.
DOCKERSUPPORT_ALLOW_LINK_LOCAL = env.bool("DOCKERSUPPORT_ALLOW_LINK_LOCAL", default=False)
# ECR connections with the default credential chain use the server's own AWS identity: their
# registry address and endpoint URL must be AWS host names (*.amazonaws.com) unless this is set.
DOCKERSUPPORT_DEFAULT_CHAIN_ANY_HOST = env.bool("DOCKERSUPPORT_DEFAULT_CHAIN_ANY_HOST", default=False)
# Tags that server clean-up never deletes, nor lets go by deleting the digest they point to, in every
# configuration besides its own protected tags: shell-style patterns separated by spaces or commas
# (`latest v* release-*`). Default: none.
DOCKERSUPPORT_PROTECTED_TAGS = env.str("DOCKERSUPPORT_PROTECTED_TAGS", default="")
# Docker Hub and GitHub's registry (ghcr.io) refuse manifest DELETE: clean-up deletes through their own APIs, the
# only other hosts their connections' credentials go to: docker.io through https://hub.docker.com and ghcr.io through
# https://api.github.com, always. *_REGISTRIES: further registry addresses treated as Docker Hub or GitHub's
# registry, comma-separated (GitHub Enterprise Server's containers.<host>; tests' local doubles), whose API is the
# matching *_API (GHES: DOCKERSUPPORT_GITHUB_API=https://<host>/api/v3). Default: none beyond docker.io, ghcr.io.
DOCKERSUPPORT_DOCKER_HUB_API = env.str("DOCKERSUPPORT_DOCKER_HUB_API", default="https://hub.docker.com")
DOCKERSUPPORT_DOCKER_HUB_REGISTRIES = env.list("DOCKERSUPPORT_DOCKER_HUB_REGISTRIES", default=[])
DOCKERSUPPORT_GITHUB_API = env.str("DOCKERSUPPORT_GITHUB_API", default="https://api.github.com")
DOCKERSUPPORT_GITHUB_REGISTRIES = env.list("DOCKERSUPPORT_GITHUB_REGISTRIES", default=[])
# (The Docker daemon, its data path and the builds' Docker configs are the agents' business: their
# settings are the agents' own, on the build hosts; see agent/.)

# API-driven builds that neither finish nor call the heartbeat endpoint are lost after API_BUILD_TIMEOUT.
DOCKERSUPPORT_API_BUILD_TIMEOUT = env.int("DOCKERSUPPORT_API_BUILD_TIMEOUT", default=6 * 3600)
# Agents beat every AGENT_HEARTBEAT_INTERVAL seconds; one silent for longer than AGENT_TIMEOUT is
# taken as gone and its running builds as lost. A job poll waits up to AGENT_JOB_WAIT seconds.
DOCKERSUPPORT_AGENT_HEARTBEAT_INTERVAL = env.int("DOCKERSUPPORT_AGENT_HEARTBEAT_INTERVAL", default=15)
DOCKERSUPPORT_AGENT_TIMEOUT = env.int("DOCKERSUPPORT_AGENT_TIMEOUT", default=120)
DOCKERSUPPORT_AGENT_JOB_WAIT = env.int("DOCKERSUPPORT_AGENT_JOB_WAIT", default=25)
# How long the API (and free_disk_space) waits for an agent to do a job: log a build in or out, free space.
DOCKERSUPPORT_AGENT_TASK_TIMEOUT = env.int("DOCKERSUPPORT_AGENT_TASK_TIMEOUT", default=120)

# --- Celery ------------------------------------------------------------------------------------
# No broker configured means the embedded mode: every task runs in-process where it is enqueued.
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="")
CELERY_TASK_ALWAYS_EAGER = not CELERY_BROKER_URL
CELERY_TASK_EAGER_PROPAGATES = True
if not CELERY_BROKER_URL:
    CELERY_BROKER_URL = "memory://localhost/"
# The API waits for agent tasks (login/logout): with a Redis broker, results go back through Redis.
CELERY_RESULT_BACKEND = env.str(
    "CELERY_RESULT_BACKEND", default=CELERY_BROKER_URL if CELERY_BROKER_URL.startswith("redis") else ""
) or None
CELERY_RESULT_EXPIRES = 3600
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "server"
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_TIMEZONE = TIME_ZONE

# --- REST API ----------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # Users' API tokens (`Authorization: Token dsu_...`), stored hashed (connections/tokens.py).
        "connections.authentication.ApiTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 50,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "dockersupport API",
    "DESCRIPTION": "Registry login for builds, Docker operations of builds, and image clean-up.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    # /api/v1/docs/ and /api/v1/redoc/ from our own static files (drf-spectacular-sidecar), never a CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # No validator badge: Swagger UI would send the schema to validator.swagger.io.
    "SWAGGER_UI_SETTINGS": {"deepLinking": True, "validatorUrl": None},
}

# --- Logging -----------------------------------------------------------------------------------
LOG_LEVEL = env.str("LOG_LEVEL", default="INFO").upper()
# The HTTP libraries log whole requests and responses at DEBUG: botocore the STS external ID, the
# assumed role's secret key and session token and the ECR token, urllib3 and requests the
# registry's headers, the Docker SDK its auth lookups. LOG_LEVEL=DEBUG is for our own code, so
# these stay at INFO at most, whatever LOG_LEVEL says (and quieter when LOG_LEVEL is).
LIBRARY_LOG_LEVEL = logging.getLevelName(max(logging.INFO, logging.getLevelNamesMapping().get(LOG_LEVEL, 0)))
QUIET_LIBRARIES = ("botocore", "boto3", "s3transfer", "urllib3", "requests", "docker")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        **{name: {"level": LIBRARY_LOG_LEVEL} for name in QUIET_LIBRARIES},
    },
}
