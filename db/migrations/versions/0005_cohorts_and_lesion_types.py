"""cohorts, lesion types and import provenance

- ``cohorts``: named, saved ROI selections (``cadx.cohorts.CohortDefinition`` as versioned JSON).
- ``rois.import_run_id``: the import run that created each ROI, filled in for existing rows from the ROI ids each
  import run's report lists.
- ``lesions.lesion_type``: the registry codes of ``cadx.lesion_types``. Rows stored before it are re-mapped where
  the stored text says the class: MIAS ``"ARCH (mass)"`` -> ``ARCH`` (ARCH and ASYM were filed under "mass"; they are
  no masses), ``"CALC (calcification)"`` -> ``CALC``, the demo's ``"synthetic spiculated mass"`` -> ``mass``;
  other text is kept as it is.
- import reports: skipped findings that can never become ROIs get a ``code`` (``no_centre``,
  ``diffuse_calcifications``, ``conflicting_pathology``) so ``cadx stats`` can count them.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""
import re

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

_MIAS = re.compile(r"^(CALC|CIRC|SPIC|MISC|ARCH|ASYM) \((mass|calcification)\)$")
_SYNTHETIC = re.compile(r"^synthetic \w[\w-]* mass$")
_PLAIN = {"mass": "mass", "masses": "mass", "calcification": "calcification", "calcifications": "calcification",
          "calc": "CALC", "circ": "CIRC", "spic": "SPIC", "misc": "MISC", "arch": "ARCH", "asym": "ASYM"}

_lesions = sa.table("lesions", sa.column("id", sa.Integer), sa.column("lesion_type", sa.String),
                    sa.column("is_synthetic", sa.Boolean), sa.column("truth", sa.JSON))
_rois = sa.table("rois", sa.column("id", sa.Integer), sa.column("import_run_id", sa.Integer))
_runs = sa.table("import_runs", sa.column("id", sa.Integer), sa.column("report", sa.JSON))


def _code(text):
    if text is None:
        return None
    stripped = " ".join(text.split())
    match = _MIAS.match(stripped)
    if match:
        return match.group(1)
    if _SYNTHETIC.match(stripped):
        return "mass"
    return _PLAIN.get(stripped.lower(), text)


def _skip_code(reason):
    if reason.startswith("diffuse calcifications"):
        return "diffuse_calcifications"
    if "no centre given" in reason:
        return "no_centre"
    if "disagree on pathology" in reason:
        return "conflicting_pathology"
    return None


def upgrade() -> None:
    op.create_table('cohorts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('definition', sa.JSON(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('created_by', sa.String(length=128), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name')
    )
    op.add_column('rois', sa.Column('import_run_id', sa.Integer(), nullable=True))
    op.create_index(op.f('ix_rois_import_run_id'), 'rois', ['import_run_id'], unique=False)

    bind = op.get_bind()
    for lesion_id, text in bind.execute(sa.select(_lesions.c.id, _lesions.c.lesion_type)).all():
        code = _code(text)
        if code != text:
            bind.execute(_lesions.update().where(_lesions.c.id == lesion_id).values(lesion_type=code))
    for run_id, report in bind.execute(sa.select(_runs.c.id, _runs.c.report)).all():
        items = list((report or {}).get("items", []))
        roi_ids = [i["roi_id"] for i in items if i.get("status") == "imported" and i.get("roi_id")]
        if roi_ids:
            bind.execute(_rois.update().where(_rois.c.id.in_(roi_ids)).values(import_run_id=run_id))
        changed = False
        for item in items:
            code = _skip_code(item.get("reason") or "") if item.get("status") == "skipped" else None
            if code and item.get("code") != code:
                item["code"] = code
                changed = True
        if changed:
            bind.execute(_runs.update().where(_runs.c.id == run_id).values(report={**report, "items": items}))


def downgrade() -> None:
    bind = op.get_bind()
    for lesion_id, text, synthetic, truth in bind.execute(
            sa.select(_lesions.c.id, _lesions.c.lesion_type, _lesions.c.is_synthetic, _lesions.c.truth)).all():
        old = text
        if text in ("CIRC", "SPIC", "MISC", "ARCH", "ASYM"):
            old = f"{text} (mass)"
        elif text == "CALC":
            old = "CALC (calcification)"
        elif text == "mass" and synthetic and (truth or {}).get("morphology"):
            old = f"synthetic {truth['morphology']} mass"
        if old != text:
            bind.execute(_lesions.update().where(_lesions.c.id == lesion_id).values(lesion_type=old))
    op.drop_index(op.f('ix_rois_import_run_id'), table_name='rois')
    op.drop_column('rois', 'import_run_id')  # native ALTER TABLE DROP COLUMN (SQLite >= 3.35): no table copy
    op.drop_table('cohorts')
