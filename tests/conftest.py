import os

import pytest
from django.core.management.commands import flush as flush_command
from django.db.backends.postgresql.operations import DatabaseOperations as PostgresOperations
from django.db.backends.signals import connection_created
from django.db.models.signals import post_migrate
from django.dispatch import receiver
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings

from tests.usage_helpers import ensure_test_partitions

REDIS_DATABASES = 16  # Redis's default `databases`


def _isolate_xdist_worker() -> None:
    """Each pytest-xdist worker (`make test` runs the suite with `-n`) is a test session of
    its own, sharing nothing with the other worker: pytest-django gives it its own test
    database (`<name>_gw0`, ...; templates, flush snapshots and bench copies are named from
    it), and here it gets its own Redis database, REDIS_URL's and CELERY_BROKER_URL's
    number plus the worker's index (control counters, leases, spool reports, the Celery
    queues its workers consume), and its own ledger spool directory. Set in the
    environment the servers and workers it starts inherit, and in this process's settings
    (pytest-django loaded them before this module)."""
    from urllib.parse import urlsplit, urlunsplit

    from django.conf import settings

    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if not worker.startswith("gw"):
        return
    index = int(worker[2:])

    def shifted(url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme in ("redis-cluster", "unix"):
            # one database only: the workers would share counters whose ids repeat
            raise RuntimeError(f"xdist workers need a numbered Redis database, not {url!r}")
        if parts.scheme not in ("redis", "rediss"):
            return url  # memory:// needs nothing
        number = int(parts.path.strip("/") or 0) + index
        if number >= REDIS_DATABASES:
            raise RuntimeError(
                f"{url!r} gives xdist worker {worker} Redis database {number}: Redis has "
                f"{REDIS_DATABASES} (0-{REDIS_DATABASES - 1}); use a lower database number"
            )
        return urlunsplit(parts._replace(path=f"/{number}"))

    for name in ("REDIS_URL", "CELERY_BROKER_URL"):
        url = os.environ.get(name)
        if url:
            os.environ[name] = shifted(url)
            setattr(settings, name, os.environ[name])
    if settings.CELERY_BROKER_URL.startswith(("amqp", "pyamqp")):
        raise RuntimeError("xdist workers would share the broker's queues: use a Redis broker")
    from config.celery import app

    app.conf.broker_url = settings.CELERY_BROKER_URL
    # a spool directory of the worker's own, also when the environment names one (a
    # period close in one worker would otherwise wait on the other's spooled records)
    spool = settings.RECKON_LEDGER_SPOOL_DIR
    spool = spool.with_name(f"{spool.name}-{worker}")
    os.environ["RECKON_LEDGER_SPOOL_DIR"] = str(spool)
    settings.RECKON_LEDGER_SPOOL_DIR = spool


_isolate_xdist_worker()

# Property tests check correctness, not speed: on a loaded 2-core CI machine an example may
# take longer than hypothesis's default 200 ms deadline without anything being wrong.
hypothesis_settings.register_profile(
    "reckon", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
hypothesis_settings.load_profile("reckon")


@receiver(connection_created)
def _allow_flushing_the_ledger(sender, connection, **kwargs):  # type: ignore[no-untyped-def]
    """The test database is flushed (TRUNCATE) after transactional tests; the ledger's
    TRUNCATE triggers (migration 0013) let a session through that says so. Tests of the
    triggers set it back (tests/metering/ledger/test_partitions.py)."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SET reckon.ledger_truncate = 'allow'")


_truncate_flush = PostgresOperations.sql_flush


def _delete_flush(self, style, tables, *, reset_sequences=False, allow_cascade=False):  # type: ignore[no-untyped-def]
    """The flush after a transactional test, as DELETEs instead of one TRUNCATE.

    Django flushes with one TRUNCATE of every table (55, 83 with the ledger's partitions):
    new files for each table and index, measured at 0.2 s a test on a quiet machine and
    1-2 s on a busy one, nearly all of it for tables that are empty. Here the flush's
    transaction first locks every table as TRUNCATE would (ACCESS EXCLUSIVE: it waits for
    the open writes of the servers and workers a test started, and no write lands between
    the lock and the deletes), then DELETEs from each (an empty table costs microseconds)
    with triggers off (session_replication_role `replica`: no foreign-key checks, so the
    order does not matter, and the ledger's immutability trigger stands aside as its
    TRUNCATE trigger does for the flush). Sequences are kept, as Django's TRUNCATE keeps
    them; a flush that resets them, or a role that may not turn triggers off, gets
    Django's TRUNCATE."""
    if reset_sequences or not tables or not _may_turn_triggers_off(self.connection):
        return _truncate_flush(
            self, style, tables, reset_sequences=reset_sequences, allow_cascade=allow_cascade
        )
    quoted = [self.quote_name(table) for table in tables]
    _restore_due[self.connection.alias] = True
    return [
        "SET LOCAL session_replication_role = replica",
        f"LOCK TABLE {', '.join(quoted)} IN ACCESS EXCLUSIVE MODE",
        *(f"DELETE FROM {table}" for table in quoted),  # noqa: S608 - Django's own table names
    ]


def _may_turn_triggers_off(connection) -> bool:  # type: ignore[no-untyped-def]
    if not hasattr(connection, "_reckon_superuser"):
        with connection.cursor() as cursor:
            cursor.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
            row = cursor.fetchone()
        connection._reckon_superuser = bool(row and row[0])
    return connection._reckon_superuser


PostgresOperations.sql_flush = _delete_flush  # type: ignore[method-assign]


# The tables Django's post-migrate step (content types, permissions) and the staff roles
# (`_roles_back_after_a_flush`) fill again after a flush, parents first.
POST_MIGRATE_TABLES = [
    "django_content_type",
    "auth_permission",
    "auth_group",
    "auth_group_permissions",
]
SNAPSHOT_SCHEMA = "reckon_flush_snapshot"
_restore_due: dict[str, bool] = {}  # by alias: the flush just run was the DELETE flush
_snapshot_taken: set[str] = set()  # aliases whose database has this process's snapshot
_emit_post_migrate = flush_command.emit_post_migrate_signal


def _post_migrate_or_restore(verbosity, interactive, db, **kwargs):  # type: ignore[no-untyped-def]
    """After the DELETE flush, the rows the post-migrate step would write, copied back.

    The post-migrate step after a flush costs 0.4-0.6 s (measured on this 2-core machine
    under load; 0.1 s of it CPU) and writes the same rows every time: it runs on empty
    tables with the same models. So the first DELETE flush of a database in this process
    runs it and keeps a copy of what it wrote (schema `reckon_flush_snapshot`, made anew
    by each run), and later DELETE flushes copy those rows back (0.03 s). Any other flush
    (Django's TRUNCATE, sequences reset) still sends the signal."""
    from django.contrib.contenttypes.models import ContentType
    from django.db import connections

    restore = _restore_due.pop(db, False)
    connection = connections[db]
    if restore and db in _snapshot_taken:
        with connection.cursor() as cursor:
            for table in POST_MIGRATE_TABLES:
                cursor.execute(
                    f"INSERT INTO {table} SELECT * FROM {SNAPSHOT_SCHEMA}.{table}"  # noqa: S608 - constant names
                )
                # The copy's ids: a sequence reset since (a TRUNCATE flush) is moved past them.
                cursor.execute("SELECT pg_get_serial_sequence(%s, 'id')", [table])
                (sequence,) = cursor.fetchone()
                cursor.execute(f"SELECT last_value FROM {sequence}")  # noqa: S608 - from the catalog
                (last,) = cursor.fetchone()
                cursor.execute(f"SELECT MAX(id) FROM {table}")  # noqa: S608 - constant names
                (highest,) = cursor.fetchone()
                if highest is not None and highest > last:
                    cursor.execute("SELECT setval(%s, %s)", [sequence, highest])
        ContentType.objects.clear_cache()  # as the post-migrate step does
        return
    _emit_post_migrate(verbosity, interactive, db, **kwargs)
    if restore:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP SCHEMA IF EXISTS {SNAPSHOT_SCHEMA} CASCADE")
            cursor.execute(f"CREATE SCHEMA {SNAPSHOT_SCHEMA}")
            for table in POST_MIGRATE_TABLES:
                cursor.execute(
                    f"CREATE TABLE {SNAPSHOT_SCHEMA}.{table} AS SELECT * FROM {table}"  # noqa: S608 - constant names
                )
        _snapshot_taken.add(db)


flush_command.emit_post_migrate_signal = _post_migrate_or_restore  # type: ignore[assignment]


@receiver(post_migrate)
def _roles_back_after_a_flush(sender, plan=None, **kwargs):  # type: ignore[no-untyped-def]
    """A flush (after a transactional test or module) empties auth_group too; Django's
    post-migrate step brings content types and permissions back, not the staff roles the
    migrations created. A flush sends post_migrate without a plan (a migrate sends its
    plan, so the roles the tests see after migrating are still the migrations' own)."""
    if plan is None and sender.label == "metering":
        from django.apps import apps as global_apps

        from api.permissions import roles_sync

        roles_sync(global_apps)


TEMPLATE_FIXTURE = "migrated_template"


def pytest_collection_modifyitems(items):  # type: ignore[no-untyped-def]
    """A test that asks for `migrated_template` needs the test database set up (pytest-django
    sets up only the databases the collected tests ask for): it is marked django_db."""
    for item in items:
        if TEMPLATE_FIXTURE in getattr(item, "fixturenames", ()):
            if item.get_closest_marker("django_db") is None:
                item.add_marker(pytest.mark.django_db)


@pytest.fixture(scope="session")
def django_db_setup(request, django_db_setup, django_db_blocker):  # type: ignore[no-untyped-def]
    """The test database's ledger partitions cover the months the tests write in.

    If a collected test asks for `migrated_template`, the freshly migrated test database is
    first copied to a template database (see that fixture): now, before any server or
    worker of the session connects to it, because PostgreSQL copies a database only while
    nobody else is connected to it."""
    if any(TEMPLATE_FIXTURE in getattr(item, "fixturenames", ()) for item in request.session.items):
        with django_db_blocker.unblock():
            _copy_test_database_to_template()
        # dropped at the session's end, whether or not this session (an xdist worker) ran
        # a test that used it
        request.addfinalizer(_drop_template)
    with django_db_blocker.unblock():
        ensure_test_partitions()
    # The replica alias (make test sets DATABASE_URL's database as DATABASE_REPLICA_URL)
    # is this process's own test replica. Servers and workers the tests start read their
    # settings from the environment and get the test database as DATABASE_URL: without
    # this, their reporting reads would go to the non-test database the URL names.
    os.environ.pop("DATABASE_REPLICA_URL", None)


@pytest.fixture(autouse=True)
def _fast_password_hash(request, settings):  # type: ignore[no-untyped-def]
    """Passwords hash with MD5 in the test process: Django's PBKDF2 (a million
    iterations) costs about half a second a sign-in here. Tests whose users a server
    process signs in (marked e2e), and tests that count PBKDF2 hashes (marked
    real_password_hash), keep the production hashers."""
    if request.node.get_closest_marker("e2e") or request.node.get_closest_marker(
        "real_password_hash"
    ):
        return
    settings.PASSWORD_HASHERS = [
        "django.contrib.auth.hashers.MD5PasswordHasher",
        *settings.PASSWORD_HASHERS,
    ]


@pytest.fixture(autouse=True)
def _fast_auth_cache(settings):  # type: ignore[no-untyped-def]
    settings.RECKON_AUTH_CACHE_SECONDS = 0.5
    # With a replica alias configured (make test), reporting views still read the primary
    # unless a test turns replica reads on (tests/api/test_replica_reads.py).
    settings.RECKON_REPLICA_READS = False


@pytest.fixture(autouse=True)
def _celery_eager(request):  # type: ignore[no-untyped-def]
    """Tasks run in-process in unit and scenario tests; tests marked `worker` use a real
    Celery worker and broker instead."""
    from config.celery import app

    if request.node.get_closest_marker("worker"):
        yield
        return
    previous = app.conf.task_always_eager
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = previous


@pytest.fixture(scope="session", autouse=True)
def _fresh_control_store():  # type: ignore[no-untyped-def]
    """The test database is created anew each run, so integer ids (API keys) come back;
    counters Redis kept for them from an earlier run would be taken for theirs. In
    production ids are never reused and Redis is rebuilt from the ledger, not kept."""
    import os

    url = os.environ.get("REDIS_URL")
    if url:
        import redis

        from config.redis_clients import redis_client

        client = redis_client(url)
        try:
            for key in client.scan_iter("rk:*", count=1000):
                client.delete(key)
        except redis.RedisError:
            pass  # tests that need Redis will say so themselves
    yield


def _template_name() -> str:
    from django.db import connection

    return f"{connection.settings_dict['NAME']}_template"


def _admin_url() -> str:
    from django.db import connection

    s = connection.settings_dict
    return f"postgres://{s['USER']}@{s['HOST']}:{s['PORT'] or 5432}/postgres"


def _copy_test_database_to_template() -> None:
    import psycopg
    from django.db import connection, connections

    if connection.vendor != "postgresql":
        return
    source, template = connection.settings_dict["NAME"], _template_name()
    test_name = connection.settings_dict["TEST"].get("NAME")
    if source != test_name and not (test_name is None and source.startswith("test_")):
        raise RuntimeError(f"{source} is not the test database: it was not set up")
    connections.close_all()
    for conn in connections.all(initialized_only=True):
        if conn.vendor == "postgresql":
            conn.close_pool()  # a pool keeps its connections open after close_all
    with psycopg.connect(_admin_url(), autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{template}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{template}" TEMPLATE "{source}"')
    # a --reuse-db session's database may hold the last run's flush snapshot
    with psycopg.connect(_admin_url().rsplit("/", 1)[0] + f"/{template}", autocommit=True) as db:
        db.execute("DROP SCHEMA IF EXISTS reckon_flush_snapshot CASCADE")


@pytest.fixture(scope="session")
def migrated_template(django_db_setup) -> str:  # type: ignore[no-untyped-def]
    """The name of a database on the test server that is the test database as `migrate`
    left it (copied by django_db_setup, before the session's partitions and tests): a test
    that needs a freshly migrated database of its own makes one in a second with
    `CREATE DATABASE x TEMPLATE <this>`, or dumps it to another server, instead of
    running every migration again (about 13 s of CPU each). Dropped at the session's end
    (`django_db_setup`)."""
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("the template database is PostgreSQL's")
    return _template_name()


def _drop_template() -> None:
    import psycopg
    from django.db import connection

    if connection.vendor != "postgresql":
        return
    with psycopg.connect(_admin_url(), autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{_template_name()}" WITH (FORCE)')
