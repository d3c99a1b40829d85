"""postmaster mail

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 15:30:00
"""
from alembic import op
import sqlalchemy as sa

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "postmaster_mail",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("raw_ct", sa.LargeBinary(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_postmaster_mail")),
    )


def downgrade() -> None:
    op.drop_table("postmaster_mail")
