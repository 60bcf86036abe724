"""Reckon settings, all from environment variables.

Defaults give the embedded mode: SQLite, Celery tasks run in-process, no Redis needed.
Production sets DATABASE_URL (PostgreSQL), REDIS_URL, CELERY_BROKER_URL and SECRET_KEY.
Scaling out: DATABASE_REPLICA_URL (a read replica for reporting reads, config/db_router.py)
and REDIS_URL=redis-cluster://host:port (a Redis Cluster, config/redis_clients.py).
"""

import os
import warnings
from decimal import Decimal
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


DEBUG = env_bool("DEBUG", False)

# --- Deployment mode: secret, hosts, HTTPS (docs/decisions/0103) ----------------------
# RECKON_ENV=production|development. Development (the default, so management commands and
# tests run anywhere) accepts the built-in secret and loopback hosts only; production takes
# every secure setting below. `manage.py serve` refuses to start unless RECKON_ENV is set
# explicitly, and in production without a real SECRET_KEY and ALLOWED_HOSTS
# (api.management.commands.serve).
RECKON_ENV = os.environ.get("RECKON_ENV", "development").strip().lower()
if RECKON_ENV not in {"production", "development"}:
    raise ValueError(f"RECKON_ENV must be production or development, not {RECKON_ENV!r}")
RECKON_PRODUCTION = RECKON_ENV == "production"
# Only for development; `serve` refuses it outside RECKON_ENV=development.
DEVELOPMENT_SECRET_KEY = "reckon-insecure-dev-key-change-me-in-production"
SECRET_KEY = os.environ.get("SECRET_KEY") or DEVELOPMENT_SECRET_KEY
# Host names this service answers to; any other Host header is a 400 (JSON under /api/),
# so a forged Host never reaches a pagination link. Required in production.
ALLOWED_HOSTS = [
    h.strip()
    for h in os.environ.get(
        "ALLOWED_HOSTS", "" if RECKON_PRODUCTION else "localhost,127.0.0.1,[::1]"
    ).split(",")
    if h.strip()
]
CSRF_TRUSTED_ORIGINS = [o for o in os.environ.get("CSRF_TRUSTED_ORIGINS", "").split(",") if o]
# Production runs behind TLS: cookies only over HTTPS, HSTS, plain HTTP redirected. A TLS
# proxy in front says the scheme in X-Forwarded-Proto (RECKON_TRUST_X_FORWARDED_PROTO).
SESSION_COOKIE_SECURE = env_bool("RECKON_SECURE_COOKIES", RECKON_PRODUCTION)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SECURE_SSL_REDIRECT = env_bool("RECKON_SSL_REDIRECT", RECKON_PRODUCTION)
SECURE_HSTS_SECONDS = int(
    os.environ.get("RECKON_HSTS_SECONDS", str(31_536_000 if RECKON_PRODUCTION else 0))
)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("RECKON_HSTS_INCLUDE_SUBDOMAINS", RECKON_PRODUCTION)
# The header only allows a submission to the browsers' preload list; the operator submits.
SECURE_HSTS_PRELOAD = env_bool("RECKON_HSTS_PRELOAD", RECKON_PRODUCTION)
if env_bool("RECKON_TRUST_X_FORWARDED_PROTO", RECKON_PRODUCTION):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# --- end deployment mode -------------------------------------------------------------

INSTALLED_APPS = [
    "config.admin_site.ReckonAdminConfig",  # django.contrib.admin, sign-in limited
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "metering",
    "billing",
    "api",
]

MIDDLEWARE = [
    # First, so a forged Host header is a JSON 400 under /api/ before anything reads it.
    "api.middleware.HostValidationMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # A request that waited RECKON_DB_POOL_TIMEOUT for a database connection: JSON 503.
    "api.middleware.DatabaseBusyMiddleware",
]

ROOT_URLCONF = "config.urls"
# The console (api/console/) signs people in; the admin keeps its own sign-in page.
LOGIN_URL = "console:login"
LOGIN_REDIRECT_URL = "console:home"
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
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

# --- Database connections (docs/decisions/0103) --------------------------------------
# Under ASGI every REST request runs its sync view in a thread of its own, so a
# per-thread persistent connection (CONN_MAX_AGE > 0) is never reused and never closed:
# one connection leaked per request. On PostgreSQL a process therefore borrows from one
# bounded pool (Django's psycopg pool, CONN_MAX_AGE=0: a connection goes back to the pool
# at the end of each request). A process holds at most RECKON_DB_POOL_MAX_SIZE of them,
# plus the proxy's ledger connections (RECKON_LEDGER_CONNECTIONS); a request that finds
# them all busy waits up to RECKON_DB_POOL_TIMEOUT seconds, then gets a JSON 503 with
# Retry-After. RECKON_DB_POOL=false: one connection per request, closed after it.
RECKON_DB_POOL = env_bool("RECKON_DB_POOL", True)
RECKON_DB_POOL_MIN_SIZE = int(os.environ.get("RECKON_DB_POOL_MIN_SIZE", "1"))
RECKON_DB_POOL_MAX_SIZE = int(os.environ.get("RECKON_DB_POOL_MAX_SIZE", "8"))
RECKON_DB_POOL_TIMEOUT = float(os.environ.get("RECKON_DB_POOL_TIMEOUT", "5"))
# Connections say who opened them (pg_stat_activity.application_name): name:pid.
RECKON_DB_APPLICATION_NAME = os.environ.get("RECKON_DB_APPLICATION_NAME", "reckon")
DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL", f"sqlite:///{BASE_DIR / 'reckon.sqlite3'}"),
        conn_max_age=0,
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    DATABASES["default"]["OPTIONS"] = {
        **DATABASES["default"].get("OPTIONS", {}),
        "application_name": f"{RECKON_DB_APPLICATION_NAME}:{os.getpid()}"[:63],
    }
    if RECKON_DB_POOL:
        DATABASES["default"]["OPTIONS"]["pool"] = {
            "min_size": RECKON_DB_POOL_MIN_SIZE,
            "max_size": RECKON_DB_POOL_MAX_SIZE,
            "timeout": RECKON_DB_POOL_TIMEOUT,
        }
# --- end database connections -------------------------------------------------------
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets the proxy's ledger writer and the API read and write side by side.
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA busy_timeout=5000;",
        "transaction_mode": "IMMEDIATE",
    }
if "TEST_DATABASE_NAME" in os.environ:
    DATABASES["default"]["TEST"] = {"NAME": os.environ["TEST_DATABASE_NAME"]}

# A PostgreSQL read replica for reporting reads (config/db_router.py says which reads and
# what may be stale). Tests get a separate database for it, its schema made from the
# models (no migrations: quick), so a test can tell which database a read went to.
DATABASE_REPLICA_URL = os.environ.get("DATABASE_REPLICA_URL", "")
if DATABASE_REPLICA_URL:
    DATABASES["replica"] = dj_database_url.parse(
        DATABASE_REPLICA_URL, conn_max_age=0, conn_health_checks=True
    )
    if DATABASES["replica"]["ENGINE"] == DATABASES["default"]["ENGINE"]:
        # the same pool and application name as the primary's connections
        DATABASES["replica"]["OPTIONS"] = dict(DATABASES["default"].get("OPTIONS", {}))
    _default_test_name = DATABASES["default"].get("TEST", {}).get("NAME") or (
        f"test_{DATABASES['default']['NAME']}"
    )
    DATABASES["replica"]["TEST"] = {"NAME": f"{_default_test_name}_replica", "MIGRATE": False}
# Reporting scopes read the replica when one is configured; false: the primary for all.
RECKON_REPLICA_READS = env_bool("RECKON_REPLICA_READS", bool(DATABASE_REPLICA_URL))
DATABASE_ROUTERS = ["config.db_router.ReportingRouter"]

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
# Embedded mode serves the admin's static files straight from the apps, no collectstatic.
WHITENOISE_USE_FINDERS = True

# redis://… (one Redis) or redis-cluster://host:port (any node of a Redis Cluster).
REDIS_URL = os.environ.get("REDIS_URL", "")

# Celery: with no broker configured, tasks run in-process (embedded mode).
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "memory://")
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", CELERY_BROKER_URL == "memory://")
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_RESULT_BACKEND = os.environ.get("CELERY_RESULT_BACKEND") or None
# The queues, named once: the routes below use them; a worker consumes all three
# (docker/compose.yml: -Q default,billing,webhooks).
QUEUE_DEFAULT = "default"
QUEUE_BILLING = "billing"  # invoicing, Stripe pushes, alert evaluation
QUEUE_WEBHOOKS = "webhooks"  # outbound alert webhooks and inbound Stripe events
CELERY_TASK_DEFAULT_QUEUE = QUEUE_DEFAULT
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = "UTC"
# Billing tasks are short and acknowledged late (a prefetched task is redelivered if the
# worker dies), so a worker may hold a few at once instead of a round trip per task.
CELERY_WORKER_PREFETCH_MULTIPLIER = int(os.environ.get("CELERY_WORKER_PREFETCH_MULTIPLIER", "8"))
CELERY_TASK_IGNORE_RESULT = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True

# --- REST authentication (docs/decisions/0103) ----------------------------------------
# Tenants: `Bearer rk_...`; staff: personal tokens `Bearer rks_...`
# (`manage.py staff_token_create`) or the admin's session. HTTP Basic with the Django
# password costs a password hash per attempt: off unless RECKON_API_BASIC_AUTH=true.
RECKON_API_BASIC_AUTH = env_bool("RECKON_API_BASIC_AUTH", False)
# A client address with this many failed credentials within the window gets 429 for the
# rest of the window, before any credential is checked (api.throttling).
RECKON_AUTH_FAILURE_LIMIT = int(os.environ.get("RECKON_AUTH_FAILURE_LIMIT", "20"))
RECKON_AUTH_FAILURE_WINDOW_SECONDS = int(os.environ.get("RECKON_AUTH_FAILURE_WINDOW_SECONDS", "60"))
# Proxies in front that append to X-Forwarded-For; 0: the peer is the client.
RECKON_TRUSTED_PROXIES = int(os.environ.get("RECKON_TRUSTED_PROXIES", "0"))
# --- end REST authentication ---------------------------------------------------------

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "api.authentication.TenantApiKeyAuthentication",
        "api.authentication.StaffTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
        *(["api.authentication.ThrottledBasicAuthentication"] if RECKON_API_BASIC_AUTH else []),
    ],
    "NUM_PROXIES": RECKON_TRUSTED_PROXIES,
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PARSER_CLASSES": [
        "api.parsers.JSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "DEFAULT_PAGINATION_CLASS": "api.pagination.IdCursorPagination",
    "PAGE_SIZE": 100,
    "EXCEPTION_HANDLER": "api.errors.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "UNAUTHENTICATED_USER": None,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Reckon API",
    "DESCRIPTION": "Metering and billing for reasoning-model APIs.",
    "VERSION": "1.0.0",
    # Schema completeness is not a deployment setting: `check --deploy` checks security
    # (tests/deploy), `manage.py spectacular --validate` checks the schema.
    "ENABLE_DJANGO_DEPLOY_CHECK": False,
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
}

# --- Reckon -------------------------------------------------------------------------
# Seconds a server process may trust its cached view of an API key or route. A revoked
# key stops working on every process within this many seconds.
RECKON_AUTH_CACHE_SECONDS = float(os.environ.get("RECKON_AUTH_CACHE_SECONDS", "2"))
# During a database outage a key looked up successfully within this many seconds keeps
# working from that lookup (its usage is spooled); other keys get 503. It is also how long
# a key revoked during an outage may keep working.
RECKON_AUTH_STALE_SECONDS = float(os.environ.get("RECKON_AUTH_STALE_SECONDS", "300"))
# Longest the proxy waits for a key lookup or a budget load from the database (seconds).
RECKON_AUTH_LOOKUP_TIMEOUT_SECONDS = float(
    os.environ.get("RECKON_AUTH_LOOKUP_TIMEOUT_SECONDS", "5")
)
# Largest request body the proxy accepts (bytes).
RECKON_MAX_BODY_BYTES = int(os.environ.get("RECKON_MAX_BODY_BYTES", str(8 * 1024 * 1024)))
# How long the proxy keeps reading an upstream stream after its client went away, so the
# upstream's final usage is still recorded.
RECKON_DRAIN_TIMEOUT_SECONDS = float(os.environ.get("RECKON_DRAIN_TIMEOUT_SECONDS", "120"))
# Upstream timeouts (seconds).
RECKON_UPSTREAM_CONNECT_TIMEOUT = float(os.environ.get("RECKON_UPSTREAM_CONNECT_TIMEOUT", "10"))
RECKON_UPSTREAM_READ_TIMEOUT = float(os.environ.get("RECKON_UPSTREAM_READ_TIMEOUT", "600"))
# Provider report import (metering.providers; decision 0116). Each run re-reads this many
# closed UTC days (plus today), and any day whose buckets changed in the last 48 hours.
RECKON_PROVIDER_REPORT_SETTLE_DAYS = int(os.environ.get("RECKON_PROVIDER_REPORT_SETTLE_DAYS", "3"))
if RECKON_PROVIDER_REPORT_SETTLE_DAYS < 0:
    raise ValueError("RECKON_PROVIDER_REPORT_SETTLE_DAYS must be 0 or more (days)")
# Largest admin API answer (one report page) the importer reads, in bytes; a larger one
# fails the run with a clear error (nothing stored).
RECKON_PROVIDER_MAX_PAGE_BYTES = int(
    os.environ.get("RECKON_PROVIDER_MAX_PAGE_BYTES", str(20 * 1024 * 1024))
)
if RECKON_PROVIDER_MAX_PAGE_BYTES < 1:
    raise ValueError("RECKON_PROVIDER_MAX_PAGE_BYTES must be at least 1 (bytes)")
# Retries of a report page on 429, 5xx or a connection error: `retry-after` when given,
# else exponential backoff with full jitter from BASE doubling up to MAX seconds.
RECKON_PROVIDER_RETRY_ATTEMPTS = int(os.environ.get("RECKON_PROVIDER_RETRY_ATTEMPTS", "6"))
RECKON_PROVIDER_RETRY_BASE_SECONDS = float(
    os.environ.get("RECKON_PROVIDER_RETRY_BASE_SECONDS", "1")
)
RECKON_PROVIDER_RETRY_MAX_SECONDS = float(os.environ.get("RECKON_PROVIDER_RETRY_MAX_SECONDS", "60"))
# Timeout of one admin API request (seconds).
RECKON_PROVIDER_HTTP_TIMEOUT_SECONDS = float(
    os.environ.get("RECKON_PROVIDER_HTTP_TIMEOUT_SECONDS", "30")
)
# Largest number of usage records committed in one ledger transaction.
RECKON_LEDGER_MAX_BATCH = int(os.environ.get("RECKON_LEDGER_MAX_BATCH", "512"))
# Ledger batches that may be in flight at once per server process (PostgreSQL).
RECKON_LEDGER_CONNECTIONS = int(os.environ.get("RECKON_LEDGER_CONNECTIONS", "2"))
# A batch goes out on a second connection only while this many records wait: below it,
# records wait for the one commit in flight and share the next (fewer, larger commits
# cost PostgreSQL less per record: 73-93 against 108-113 us at c=32 in `make bench`).
RECKON_LEDGER_PARALLEL_AT = int(os.environ.get("RECKON_LEDGER_PARALLEL_AT", "64"))
# Where records that could not be committed are journaled (fsync'd) until replayed.
RECKON_LEDGER_SPOOL_DIR = Path(
    os.environ.get("RECKON_LEDGER_SPOOL_DIR", str(BASE_DIR / "var" / "spool"))
)
# While spool exists, a writer retries loading it this often (seconds), traffic or not.
RECKON_LEDGER_SPOOL_PROBE_SECONDS = float(os.environ.get("RECKON_LEDGER_SPOOL_PROBE_SECONDS", "1"))
# How long a server's shutdown waits for its spool to load before leaving it on disk.
RECKON_LEDGER_SHUTDOWN_REPLAY_SECONDS = float(
    os.environ.get("RECKON_LEDGER_SHUTDOWN_REPLAY_SECONDS", "10")
)
# Expiry (seconds) of a writer's Redis report of unreplayed spool, refreshed every probe.
RECKON_LEDGER_SPOOL_HEARTBEAT_SECONDS = float(
    os.environ.get("RECKON_LEDGER_SPOOL_HEARTBEAT_SECONDS", "30")
)
# Months of usage records kept in the database (whole calendar months before the current
# one); older months are archived, verified and dropped daily (metering.ledger.archive).
# Unset or empty: keep every month forever.
RECKON_LEDGER_RETENTION_MONTHS = (
    int(os.environ["RECKON_LEDGER_RETENTION_MONTHS"])
    if os.environ.get("RECKON_LEDGER_RETENTION_MONTHS", "").strip()
    else None
)
if RECKON_LEDGER_RETENTION_MONTHS is not None and RECKON_LEDGER_RETENTION_MONTHS < 1:
    raise ValueError("RECKON_LEDGER_RETENTION_MONTHS must be at least 1 (or unset: keep forever)")
# Where archived months go: file:///dir or s3://bucket/prefix. S3 credentials come only from
# the environment boto3 reads (AWS_ACCESS_KEY_ID, ...), never from this URL.
RECKON_LEDGER_ARCHIVE_URL = os.environ.get(
    "RECKON_LEDGER_ARCHIVE_URL", (BASE_DIR / "var" / "archive").as_uri()
)
# Endpoint of an S3-compatible store (MinIO, Ceph, R2, ...); empty: AWS S3.
RECKON_LEDGER_ARCHIVE_ENDPOINT_URL = os.environ.get("RECKON_LEDGER_ARCHIVE_ENDPOINT_URL", "")
# Months of ledger partitions kept ready after the current one (PostgreSQL; an hourly
# beat task and every server start ensure them: metering.ledger.partitions).
RECKON_LEDGER_PARTITIONS_AHEAD = int(os.environ.get("RECKON_LEDGER_PARTITIONS_AHEAD", "3"))

# WhiteNoise hands Django's ASGI handler synchronous file iterators for static files (the
# admin's CSS); harmless, but it would warn on every file.
warnings.filterwarnings(
    "ignore", message="StreamingHttpResponse must consume synchronous iterators"
)

# --- Billing ------------------------------------------------------------------------
RECKON_INVOICE_PREFIX = os.environ.get("RECKON_INVOICE_PREFIX", "RK")
RECKON_CREDIT_NOTE_PREFIX = os.environ.get("RECKON_CREDIT_NOTE_PREFIX", "RKCN")
# Hours after a period ends before it is closed, so late usage still lands on it.
RECKON_INVOICE_GRACE_HOURS = int(os.environ.get("RECKON_INVOICE_GRACE_HOURS", "24"))
# Days from issue to due date.
RECKON_INVOICE_NET_DAYS = int(os.environ.get("RECKON_INVOICE_NET_DAYS", "30"))
# Finalized periods re-rated at each close to bill usage that arrived after them.
RECKON_LATE_USAGE_LOOKBACK_PERIODS = int(os.environ.get("RECKON_LATE_USAGE_LOOKBACK_PERIODS", "2"))
# Tenants closed together in one period-close task and transaction.
RECKON_CLOSE_BATCH_SIZE = int(os.environ.get("RECKON_CLOSE_BATCH_SIZE", "250"))
RECKON_SELLER = {
    "name": os.environ.get("RECKON_SELLER_NAME", "Reckon Inference, Inc."),
    "address_lines": [
        line
        for line in os.environ.get(
            "RECKON_SELLER_ADDRESS", "1 Market Street|San Francisco, CA 94105|USA"
        ).split("|")
        if line
    ],
    "tax_id": os.environ.get("RECKON_SELLER_TAX_ID", ""),
    "email": os.environ.get("RECKON_SELLER_EMAIL", "billing@reckon.example"),
}
# Named points where tests inject a crash (billing.faults.checkpoint); empty in production.
RECKON_FAULT_POINTS = frozenset(
    p for p in os.environ.get("RECKON_FAULT_POINTS", "").split(",") if p
)

# Stripe: with no API key, invoicing works locally and nothing calls Stripe.
STRIPE_API_KEY = os.environ.get("STRIPE_API_KEY", "")
STRIPE_WEBHOOK_SECRET = os.environ.get("STRIPE_WEBHOOK_SECRET", "")
# Only for tests and local fakes; production uses the SDK's default.
STRIPE_API_BASE = os.environ.get("STRIPE_API_BASE", "")

CELERY_BEAT_SCHEDULE = {
    "close-due-periods": {
        "task": "billing.tasks.close_due_periods",
        "schedule": 3600.0,  # hourly; each run replays safely (as_of defaults to now)
    },
    "sync-pending-invoices": {
        "task": "billing.tasks.sync_pending_invoices",
        "schedule": 600.0,
    },
    "alerts-sweep": {
        "task": "billing.alerts_sweep",
        "schedule": 300.0,  # budget and balance thresholds the proxy's triggers missed
    },
    "expire-credits": {
        "task": "billing.tasks.expire_credits",
        "schedule": 3600.0,
    },
    "learn-hold-caps": {
        "task": "metering.tasks.learn_hold_caps",
        "schedule": 3600.0,
    },
    "route-expectations-learn": {
        "task": "metering.tasks.learn_route_expectations",
        "schedule": 3600.0,  # expected tokens per target and effort (metering.routing.learn)
    },
    "ledger-partitions-ensure": {
        "task": "metering.tasks.ledger_partitions_ensure",
        "schedule": 3600.0,  # months ahead kept ready; logs an error when coverage is short
    },
    "fold-rollup-shards": {
        "task": "metering.tasks.fold_rollup_shards",
        "schedule": 300.0,  # closed hours' write shards into one row (metering.ledger.rollups)
    },
    "control-counters-rebuild": {
        "task": "metering.tasks.control_counters_rebuild",
        "schedule": 60.0,  # lost holds and dead processes' slices given back (metering.control.counters)
    },
    "provider-reports-sync": {
        "task": "metering.tasks.provider_reports_sync_due",
        "schedule": 3600.0,  # hourly: import each provider account's report, then reconcile
    },
    "ledger-retention": {
        "task": "metering.tasks.ledger_retention",
        "schedule": 86400.0,  # daily; months past RECKON_LEDGER_RETENTION_MONTHS archived
    },
}
CELERY_TASK_ROUTES = {
    "billing.tasks.*": {"queue": QUEUE_BILLING},
    "billing.alerts_*": {"queue": QUEUE_BILLING},
    "billing.alert_deliver": {"queue": QUEUE_WEBHOOKS},
    "billing.tasks.process_stripe_event": {"queue": QUEUE_WEBHOOKS},
}

# Seconds after an hour ends before its rollups' write shards fold into one row
# (metering.tasks.fold_rollup_shards); later records for it are folded on the next run.
RECKON_ROLLUP_FOLD_GRACE_SECONDS = int(os.environ.get("RECKON_ROLLUP_FOLD_GRACE_SECONDS", "600"))

# --- Spend control ------------------------------------------------------------------
# When Redis (the shared control store) is unreachable, refuse calls that have spend or
# rate limits (false, the default) or let them through unchecked (true).
RECKON_CONTROL_FAIL_OPEN = env_bool("RECKON_CONTROL_FAIL_OPEN", False)
# Far from every limit, a server process admits calls on slices of the budgets and rate
# windows it takes this many calls at a time (metering.control.leases); 0: every call in Redis.
RECKON_CONTROL_LEASE_CALLS = int(os.environ.get("RECKON_CONTROL_LEASE_CALLS", "32"))
# An exact spend hold not settled this many seconds after admission (its process died, its
# settlement was lost) is reaped: counted as spent in full, then its budget is rebuilt from
# the ledger. The longest a call may run while its hold is still trusted.
RECKON_CONTROL_HOLD_TTL_SECONDS = float(os.environ.get("RECKON_CONTROL_HOLD_TTL_SECONDS", "3600"))
# Rate-limit window in seconds (limits are per minute at the default 60).
RECKON_RATE_WINDOW_SECONDS = int(os.environ.get("RECKON_RATE_WINDOW_SECONDS", "60"))
# The most output (visible + reasoning) tokens a call that names no maximum is granted
# when budgets apply; the grant is sent upstream as the call's maximum.
RECKON_HOLD_CEILING_TOKENS = int(
    os.environ.get(
        "RECKON_HOLD_CEILING_TOKENS", os.environ.get("RECKON_DEFAULT_MAX_OUTPUT_TOKENS", "32768")
    )
)
# Such a call takes at most 1/share of what is left in its budgets (never less than the
# plausible size learned for the alias), so one call cannot starve the ones beside it.
RECKON_HOLD_SHARE = int(os.environ.get("RECKON_HOLD_SHARE", "4"))
# Input tokens held for a call whose input is stored upstream (Responses
# `previous_response_id` / `conversation`): the body does not show how much it is.
RECKON_HOLD_UNSEEN_INPUT_TOKENS = int(os.environ.get("RECKON_HOLD_UNSEEN_INPUT_TOKENS", "200000"))
# Hold caps are learned from this many days of calls, per tenant and alias once it has at
# least RECKON_HOLD_CAP_MIN_SAMPLES calls (else across tenants, else the ceiling).
RECKON_HOLD_CAP_DAYS = int(os.environ.get("RECKON_HOLD_CAP_DAYS", "7"))
RECKON_HOLD_CAP_MIN_SAMPLES = int(os.environ.get("RECKON_HOLD_CAP_MIN_SAMPLES", "50"))

# --- Routing across an alias's targets (metering.routing, decision 0117) ------------
# Circuit breaker, shared by every server process through Redis: a target opens when,
# within WINDOW_S seconds, at least FAILURES retryable failures are at least RATIO of the
# attempts reported; it stays out COOLDOWN_S, doubling per re-open up to MAX_COOLDOWN_S.
RECKON_ROUTE_BREAKER_FAILURES = int(os.environ.get("RECKON_ROUTE_BREAKER_FAILURES", "5"))
RECKON_ROUTE_BREAKER_RATIO = Decimal(os.environ.get("RECKON_ROUTE_BREAKER_RATIO", "0.5"))
RECKON_ROUTE_BREAKER_WINDOW_S = int(os.environ.get("RECKON_ROUTE_BREAKER_WINDOW_S", "10"))
RECKON_ROUTE_BREAKER_COOLDOWN_S = int(os.environ.get("RECKON_ROUTE_BREAKER_COOLDOWN_S", "30"))
RECKON_ROUTE_BREAKER_MAX_COOLDOWN_S = int(
    os.environ.get("RECKON_ROUTE_BREAKER_MAX_COOLDOWN_S", "300")
)
# `cheapest`: expected costs within this fraction of the lowest are a tie (broken by the
# lower learned p50 latency, then priority).
RECKON_ROUTE_COST_TIE = Decimal(os.environ.get("RECKON_ROUTE_COST_TIE", "0.02"))
# Expected tokens per target and effort are learned from this many days of attempts;
# below MIN_SAMPLES answered attempts a target takes its alias's mean for that effort.
RECKON_ROUTE_LEARN_DAYS = int(os.environ.get("RECKON_ROUTE_LEARN_DAYS", "7"))
RECKON_ROUTE_MIN_SAMPLES = int(os.environ.get("RECKON_ROUTE_MIN_SAMPLES", "50"))

# --- Reconciliation against the providers' reports (metering.reconcile) -------------
# A row matches when |theirs - ours| <= max(TOKENS, RELATIVE x theirs); exact Decimal.
RECKON_RECON_TOLERANCE_TOKENS = int(os.environ.get("RECKON_RECON_TOLERANCE_TOKENS", "0"))
RECKON_RECON_TOLERANCE_RELATIVE = Decimal(
    os.environ.get("RECKON_RECON_TOLERANCE_RELATIVE", "0.001")
)
if RECKON_RECON_TOLERANCE_TOKENS < 0 or not (
    RECKON_RECON_TOLERANCE_RELATIVE.is_finite() and RECKON_RECON_TOLERANCE_RELATIVE >= 0
):
    raise ValueError("RECKON_RECON_TOLERANCE_* must be finite and not negative")
# A day's rows stay `pending` while the import still re-reads it (its end +
# RECKON_PROVIDER_REPORT_SETTLE_DAYS, above).
# Reconciliation alerts: a settled day's class whose |relative drift| (drift / theirs) is
# at least this fires an operator alert (exact decimal text; missing-in-ledger always fires).
try:
    RECKON_RECON_ALERT_RELATIVE = Decimal(os.environ.get("RECKON_RECON_ALERT_RELATIVE", "0.01"))
except ArithmeticError:
    raise ValueError("RECKON_RECON_ALERT_RELATIVE must be a decimal number") from None
if not (RECKON_RECON_ALERT_RELATIVE.is_finite() and RECKON_RECON_ALERT_RELATIVE >= 0):
    raise ValueError("RECKON_RECON_ALERT_RELATIVE must be finite and not negative")

# The embedded SQLite mode cannot enforce "one tenant-wide limit" (NULLS NOT DISTINCT);
# PostgreSQL, the production database, does.
SILENCED_SYSTEM_CHECKS = ["models.W047"]
