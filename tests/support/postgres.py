"""The tests' PostgreSQL is the bench's (see `hil.postgres`)."""

from hil.postgres import PostgresServer, postgres_bindir, running_postgres

__all__ = ["PostgresServer", "postgres_bindir", "running_postgres"]
