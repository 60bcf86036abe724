"""The flush after a transactional test (tests/conftest.py): the rows the post-migrate step
writes (content types, permissions, staff roles) are copied back from a snapshot instead
of sending the signal again; they must be the rows the signal writes, and new rows must
get ids past them, also after a flush that reset the sequences."""

import pytest
from django.contrib.auth.models import Group, Permission
from django.contrib.contenttypes.models import ContentType
from django.core.management import call_command


def post_migrate_rows() -> tuple[list, list, list]:
    return (
        sorted(ContentType.objects.values_list("app_label", "model")),
        sorted(Permission.objects.values_list("content_type__app_label", "codename", "name")),
        sorted(
            (group.name, sorted(group.permissions.values_list("codename", flat=True)))
            for group in Group.objects.all()
        ),
    )


@pytest.mark.parametrize("step", ["first", "copied-back", "truncated", "after-the-reset"])
def test_a_flush_leaves_the_rows_the_post_migrate_step_writes(transactional_db, step: str) -> None:
    """Each step runs after the previous one's flush: by the second step at the latest the
    rows are the snapshot's copy."""
    if step == "truncated":
        copied = post_migrate_rows()
        # Django's TRUNCATE flush (sequences reset) sends the signal: the same rows
        call_command("flush", interactive=False, verbosity=0)
        assert post_migrate_rows() == copied
        assert copied[2], "the staff roles are back"
    Group.objects.create(name=f"scratch-{step}")  # a new id (past the copy's), flushed after
    assert ContentType.objects.get_for_model(Group).pk == (
        ContentType.objects.get(app_label="auth", model="group").pk
    )
