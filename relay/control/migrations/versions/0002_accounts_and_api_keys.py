"""Accounts and scoped API keys; every authtoken belongs to an account.

One operator account named ``default`` is created, and every token that exists gives itself
to it: a data directory from before accounts keeps working unchanged (its tokens, and any
made later without naming an account, are the default account's). A fresh database gets the
same account through this same migration, so no code path has to create it on the side.

Creating ``default`` is not written to the audit log: it is part of the schema, as the tables
are, and the audit chain's code must not be frozen into a migration (this file must keep
doing what it does today after that code changes).

Revision ID: 0002
Revises: 0001
"""

import secrets
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

#: Copied, not imported: a migration must not change when the code it came with does.
_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"


def upgrade() -> None:
    accounts = op.create_table(
        "accounts",
        sa.Column("id", sa.String(16), primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("suspended_at", sa.DateTime, nullable=True),
        sa.UniqueConstraint("name", name="uq_accounts_name"),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(12), primary_key=True),
        sa.Column("account_id", sa.String(16), nullable=False),
        sa.Column("salt", sa.LargeBinary(16), nullable=False),
        sa.Column("hash", sa.LargeBinary(32), nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("scopes", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("expires_at", sa.DateTime, nullable=True),
        sa.Column("revoked_at", sa.DateTime, nullable=True),
        sa.Column("last_used_at", sa.DateTime, nullable=True),
        sa.Column("last_used_addr", sa.Text, nullable=True),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name="fk_api_keys_account_id_accounts"
        ),
    )
    op.create_index("ix_api_keys_account_id", "api_keys", ["account_id"])

    default_id = "acc_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(12))
    # The store keeps naive UTC (relay.control.tables.UTCDateTime).
    now = datetime.now(UTC).replace(tzinfo=None)
    op.bulk_insert(
        accounts,
        [
            {
                "id": default_id,
                "name": "default",
                "role": "operator",
                "status": "active",
                "created_at": now,
                "suspended_at": None,
            }
        ],
    )

    # Nullable first, filled, then NOT NULL: existing rows need a value before the
    # constraint can hold. On SQLite the second batch rebuilds the table (copying every
    # row); the first only adds columns.
    with op.batch_alter_table("tokens") as batch:
        batch.add_column(sa.Column("account_id", sa.String(16), nullable=True))
        batch.add_column(sa.Column("last_used_addr", sa.Text, nullable=True))
    tokens = sa.table("tokens", sa.column("account_id", sa.String(16)))
    op.execute(tokens.update().values(account_id=default_id))
    with op.batch_alter_table("tokens") as batch:
        batch.alter_column("account_id", existing_type=sa.String(16), nullable=False)
        batch.create_foreign_key(
            "fk_tokens_account_id_accounts", "accounts", ["account_id"], ["id"]
        )
        batch.create_index("ix_tokens_account_id", ["account_id"])


def downgrade() -> None:
    with op.batch_alter_table("tokens") as batch:
        batch.drop_index("ix_tokens_account_id")
        batch.drop_constraint("fk_tokens_account_id_accounts", type_="foreignkey")
        batch.drop_column("last_used_addr")
        batch.drop_column("account_id")
    op.drop_index("ix_api_keys_account_id", table_name="api_keys")
    op.drop_table("api_keys")
    op.drop_table("accounts")
