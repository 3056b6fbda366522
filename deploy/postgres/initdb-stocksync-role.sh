#!/bin/sh
# docker-entrypoint-initdb.d script of docker-compose.yml: runs the README's role SQL
# (deploy/postgres/stocksync-role.sql) once, when the database is created, with the
# password from STOCKSYNC_DB_PASSWORD. stocksync then connects as that role, never as postgres.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -v password="$STOCKSYNC_DB_PASSWORD" -f /stocksync/stocksync-role.sql
