"""Scaling out: local Postgres, Redis, Celery workers and Dagster daemons for the `scale` extra (see deploy/)."""
