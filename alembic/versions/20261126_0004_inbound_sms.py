"""inbound SMS: seen MessageSids, held messages and their media, status callbacks, media to delete at Twilio

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26 17:00:00
"""
from alembic import op
import sqlalchemy as sa

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sms_inbound",
        sa.Column("message_sid", sa.String(length=64), nullable=False),
        sa.Column("practice_id", sa.String(length=32), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["practice_id"], ["practices.id"], name=op.f("fk_sms_inbound_practice_id_practices")),
        sa.PrimaryKeyConstraint("message_sid", name=op.f("pk_sms_inbound")),
    )
    with op.batch_alter_table("sms_inbound", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_sms_inbound_practice_id"), ["practice_id"], unique=False)

    op.create_table(
        "held_sms",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("practice_id", sa.String(length=32), nullable=False),
        sa.Column("patient_id", sa.String(length=32), nullable=False),
        sa.Column("contact_id", sa.String(length=32), nullable=False),
        sa.Column("message_sid", sa.String(length=64), nullable=False),
        sa.Column("body_ct", sa.LargeBinary(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("released_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("message_id", sa.String(length=32), nullable=True),
        sa.ForeignKeyConstraint(["practice_id"], ["practices.id"], name=op.f("fk_held_sms_practice_id_practices")),
        sa.ForeignKeyConstraint(["patient_id"], ["patients.id"], name=op.f("fk_held_sms_patient_id_patients")),
        sa.ForeignKeyConstraint(
            ["contact_id"], ["contact_points.id"], name=op.f("fk_held_sms_contact_id_contact_points")
        ),
        sa.ForeignKeyConstraint(["message_id"], ["messages.id"], name=op.f("fk_held_sms_message_id_messages")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_held_sms")),
        sa.UniqueConstraint("message_sid", name=op.f("uq_held_sms_message_sid")),
    )
    with op.batch_alter_table("held_sms", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_held_sms_practice_id"), ["practice_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_held_sms_patient_id"), ["patient_id"], unique=False)

    op.create_table(
        "held_sms_media",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("held_id", sa.String(length=32), nullable=False),
        sa.Column("filename_ct", sa.LargeBinary(), nullable=False),
        sa.Column("content_type", sa.String(length=127), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("content_ct", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["held_id"], ["held_sms.id"], name=op.f("fk_held_sms_media_held_id_held_sms")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_held_sms_media")),
    )
    with op.batch_alter_table("held_sms_media", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_held_sms_media_held_id"), ["held_id"], unique=False)

    op.create_table(
        "sms_status_events",
        sa.Column("message_sid", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("error_code", sa.String(length=16), nullable=True),
        sa.Column("applied", sa.Boolean(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("message_sid", "status", name=op.f("pk_sms_status_events")),
    )

    op.create_table(
        "twilio_media_deletions",
        sa.Column("path", sa.String(length=200), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("path", name=op.f("pk_twilio_media_deletions")),
    )


def downgrade() -> None:
    op.drop_table("twilio_media_deletions")
    op.drop_table("sms_status_events")
    with op.batch_alter_table("held_sms_media", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_held_sms_media_held_id"))
    op.drop_table("held_sms_media")
    with op.batch_alter_table("held_sms", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_held_sms_patient_id"))
        batch_op.drop_index(batch_op.f("ix_held_sms_practice_id"))
    op.drop_table("held_sms")
    with op.batch_alter_table("sms_inbound", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_sms_inbound_practice_id"))
    op.drop_table("sms_inbound")
