"""Reserved domains and reserved TCP addresses, each belonging to one account.

A reserved domain is an exact name (``app.example.com``) or a wildcard (``*.example.com``)
with how its certificate is provided (``auto``: the edge issues it; ``manual``: the
operator supplies the files); a reserved address is a TCP port. Either may name the region
it is pinned to (stored now; enforced once PoPs form a cluster). Both tables start empty:
until something is reserved, every edge binds as it did before.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "reserved_domains",
        sa.Column("id", sa.String(15), primary_key=True),
        sa.Column("account_id", sa.String(16), nullable=False),
        sa.Column("domain", sa.Text, nullable=False),
        sa.Column("certificate_mode", sa.String(16), nullable=False),
        sa.Column("region", sa.Text, nullable=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name="fk_reserved_domains_account_id_accounts"
        ),
        sa.UniqueConstraint("domain", name="uq_reserved_domains_domain"),
    )
    op.create_index("ix_reserved_domains_account_id", "reserved_domains", ["account_id"])
    op.create_table(
        "reserved_addrs",
        sa.Column("id", sa.String(15), primary_key=True),
        sa.Column("account_id", sa.String(16), nullable=False),
        sa.Column("port", sa.Integer, nullable=False),
        sa.Column("region", sa.Text, nullable=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name="fk_reserved_addrs_account_id_accounts"
        ),
        sa.UniqueConstraint("port", name="uq_reserved_addrs_port"),
        sa.CheckConstraint("port >= 1 AND port <= 65535", name="ck_reserved_addrs_port"),
    )
    op.create_index("ix_reserved_addrs_account_id", "reserved_addrs", ["account_id"])


def downgrade() -> None:
    op.drop_index("ix_reserved_addrs_account_id", table_name="reserved_addrs")
    op.drop_table("reserved_addrs")
    op.drop_index("ix_reserved_domains_account_id", table_name="reserved_domains")
    op.drop_table("reserved_domains")
