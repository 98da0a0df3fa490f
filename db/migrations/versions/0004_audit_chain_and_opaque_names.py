"""audit hash chain; user-given file and folder names removed from stored rows

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30

Adds ``audit_events.prev_hash`` / ``audit_events.hash`` and chains every existing event (db.audit_chain). Before
chaining, the names of user files and folders that earlier versions stored verbatim (import sources, report item
names, lesions' pathology source, audit targets) or as an unkeyed hash (images' ``file-<sha256(name)>`` names, which
can be reversed by hashing candidate names) are replaced: the migration has no access to the installation's
pseudonym key, so the names are removed, not pseudonymised. Dataset ids (MIAS, CBIS-DDSM) are public and kept.
"""
import re

import sqlalchemy as sa
from alembic import op

from db.audit_chain import GENESIS, event_hash
from db.models import DateTime

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

_USER_KINDS = ("manifest", "dicom", "upload", "mias", "cbis-ddsm")
_REMOVED = "(name removed)"
_OLD_OPAQUE = re.compile(r"file-[0-9a-f]{12}")

_audit = sa.table("audit_events", sa.column("id", sa.Integer), sa.column("at", DateTime()),
                  sa.column("user", sa.String), sa.column("action", sa.String), sa.column("target", sa.String),
                  sa.column("detail", sa.JSON), sa.column("prev_hash", sa.String), sa.column("hash", sa.String))
_runs = sa.table("import_runs", sa.column("id", sa.Integer), sa.column("kind", sa.String),
                 sa.column("source", sa.String), sa.column("report", sa.JSON))
_lesions = sa.table("lesions", sa.column("id", sa.Integer), sa.column("pathology_source", sa.String))
_images = sa.table("images", sa.column("id", sa.Integer), sa.column("source_name", sa.String))


def upgrade() -> None:
    op.add_column("audit_events", sa.Column("prev_hash", sa.String(length=64), nullable=True))
    op.add_column("audit_events", sa.Column("hash", sa.String(length=64), nullable=True))
    bind = op.get_bind()
    _remove_names(bind)
    _set_append_only(bind, False)
    previous = GENESIS
    for row in bind.execute(sa.select(_audit).order_by(_audit.c.id)).mappings().all():
        target = row["target"]
        if row["action"] in ("import", "upload") and target.split(" ", 1)[0] in _USER_KINDS:
            target = f"{target.split(' ', 1)[0]} {_REMOVED}"
        digest = event_hash(previous, at=row["at"], user=row["user"], action=row["action"], target=target,
                            detail=row["detail"])
        bind.execute(_audit.update().where(_audit.c.id == row["id"])
                     .values(target=target, prev_hash=previous, hash=digest))
        previous = digest
    _set_append_only(bind, True)


def _scrub(text, source: str | None) -> str:
    if text is None:
        return text
    if source:
        text = text.replace(source, _REMOVED)
    text = _OLD_OPAQUE.sub("file-removed", text)
    return re.sub(r"is not in .* \(partial copy\)", "is not in the folder (partial copy)", text)


def _remove_names(bind) -> None:
    for run in bind.execute(sa.select(_runs)).mappings().all():
        if run["kind"] not in _USER_KINDS:
            continue
        report = dict(run["report"] or {})
        report["items"] = [{**item, "name": _scrub(item.get("name"), run["source"]),
                            "reason": _scrub(item.get("reason"), run["source"])}
                           for item in report.get("items", [])]
        bind.execute(_runs.update().where(_runs.c.id == run["id"]).values(source=_REMOVED, report=report))
    for lesion in bind.execute(sa.select(_lesions)).mappings().all():
        kind = (lesion["pathology_source"] or "").split(" ", 1)[0]
        if kind in ("manifest", "dicom"):
            bind.execute(_lesions.update().where(_lesions.c.id == lesion["id"])
                         .values(pathology_source=f"{kind} {_REMOVED}"))
    for image in bind.execute(sa.select(_images).where(_images.c.source_name.like("file-%"))).mappings().all():
        bind.execute(_images.update().where(_images.c.id == image["id"])
                     .values(source_name=_OLD_OPAQUE.sub(f"image-{image['id']}", image["source_name"])))


def _set_append_only(bind, on: bool) -> None:
    """Lift (briefly, inside this migration's transaction) or restore the append-only triggers of migration 0003."""
    if bind.dialect.name == "postgresql":
        op.execute(f"ALTER TABLE audit_events {'ENABLE' if on else 'DISABLE'} TRIGGER audit_events_append_only")
        return
    for event in ("UPDATE", "DELETE"):
        name = f"audit_events_no_{event.lower()}"
        if on:
            op.execute(f"CREATE TRIGGER {name} BEFORE {event} ON audit_events "
                       "BEGIN SELECT RAISE(ABORT, 'audit_events is append-only'); END")
        else:
            op.execute(f"DROP TRIGGER IF EXISTS {name}")


def downgrade() -> None:
    # The removed names are not restored (they were never meant to be stored); the chain columns go.
    # Plain ALTER TABLE ... DROP COLUMN (SQLite >= 3.35): a batch copy of the table would drop its triggers.
    op.drop_column("audit_events", "hash")
    op.drop_column("audit_events", "prev_hash")
