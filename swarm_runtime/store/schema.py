"""The database's tables, owned by the runtime: created and migrated on start.

`MIGRATIONS[n]` takes the schema from version n to n + 1; `swarm_schema` holds the
version reached. Every process runs `migrate` when it connects, under an advisory lock
held to the end of the transaction, so two processes starting at once never race: the
second waits, then finds nothing left to do.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from swarm_runtime.contract import BALANCES_FILE, REWARD_LEDGER_FILE

if TYPE_CHECKING:
    from psycopg import Connection

MIGRATION_LOCK = 0x5357_4152_4D01  # any constant the runtime alone uses

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE swarm_queue (
        id integer PRIMARY KEY CHECK (id = 1),
        header json NOT NULL,
        changes bigint NOT NULL DEFAULT 0
    );
    INSERT INTO swarm_queue (id, header) VALUES (1, '{}');
    CREATE TABLE swarm_tasks (
        id text PRIMARY KEY,
        position numeric NOT NULL UNIQUE,
        status text NOT NULL,
        lease_expires_at double precision,
        changed bigint NOT NULL,
        doc json NOT NULL
    );
    CREATE INDEX swarm_tasks_status ON swarm_tasks (status);
    CREATE INDEX swarm_tasks_changed ON swarm_tasks (changed);
    CREATE SEQUENCE swarm_outcome_order;
    CREATE TABLE swarm_outcomes (
        task_id text PRIMARY KEY,
        outcome text CHECK (outcome IN ('completed', 'failed')),
        listed bigint NOT NULL DEFAULT nextval('swarm_outcome_order'),
        changed bigint NOT NULL
    );
    CREATE INDEX swarm_outcomes_changed ON swarm_outcomes (changed);
    CREATE TABLE swarm_archive (
        archived bigserial PRIMARY KEY,
        task_id text NOT NULL,
        changed bigint NOT NULL,
        doc json NOT NULL
    );
    CREATE INDEX swarm_archive_changed ON swarm_archive (changed);
    """,
    """
    CREATE TABLE swarm_documents (
        name text PRIMARY KEY,
        doc json NOT NULL
    );
    """,
    """
    CREATE TABLE swarm_events (
        id bigserial PRIMARY KEY,
        task_id text NOT NULL,
        worker_id text NOT NULL,
        status text NOT NULL,
        timestamp text NOT NULL,
        record json NOT NULL
    );
    CREATE INDEX swarm_events_task ON swarm_events (task_id, id);
    """,
    """
    CREATE TABLE swarm_workers (
        worker_id text PRIMARY KEY,
        doc json NOT NULL
    );
    """,
    # Rewards as rows: a grant is once per (task, identity) by its key. The two documents
    # that held them (always written in one transaction, so never half a grant) are carried
    # over, in the ledger's order, then dropped; the reference's balances keep identities
    # at the top level.
    f"""
    CREATE TABLE swarm_reward_grants (
        task_id text NOT NULL,
        identity_id text NOT NULL,
        tokens_awarded integer NOT NULL CHECK (tokens_awarded >= 0),
        listed bigserial NOT NULL,
        revision bigint NOT NULL DEFAULT 1,
        doc json NOT NULL,
        PRIMARY KEY (task_id, identity_id)
    );
    CREATE TABLE swarm_reward_balances (
        identity_id text PRIMARY KEY,
        revision bigint NOT NULL DEFAULT 1,
        doc json NOT NULL
    );
    INSERT INTO swarm_reward_grants (task_id, identity_id, tokens_awarded, doc)
    SELECT entry->>'task_id', entry->>'identity_id', (entry->>'tokens_awarded')::integer, entry
    FROM swarm_documents, json_each(doc->'grants') WITH ORDINALITY AS grants(key, entry, n)
    WHERE name = '{REWARD_LEDGER_FILE}'
    ORDER BY n;
    INSERT INTO swarm_reward_balances (identity_id, doc)
    SELECT identities.key, identities.value
    FROM swarm_documents, json_each(
        CASE WHEN doc::jsonb ?| array['version', 'identities']
        THEN coalesce(doc->'identities', '{{}}') ELSE doc END
    ) AS identities
    WHERE name = '{BALANCES_FILE}';
    DELETE FROM swarm_documents WHERE name IN ('{REWARD_LEDGER_FILE}', '{BALANCES_FILE}');
    """,
    # Claims by row lock (queue.postgres): each task row says whether a claim may take
    # it by its row lock alone (`lane`), and every row names the transaction that last
    # wrote it, which is how a reader catches up without a change counter that every
    # writer would queue on. Lanes start as 'full': the first claim judges them again.
    """
    ALTER TABLE swarm_tasks
        ADD COLUMN lane text CHECK (lane IN ('fast', 'alone', 'full')),
        ADD COLUMN not_before double precision,
        ADD COLUMN parallel_safe boolean NOT NULL DEFAULT true,
        ADD COLUMN lease_host text,
        ADD COLUMN written_by xid8 NOT NULL DEFAULT pg_current_xact_id(),
        DROP COLUMN changed;
    UPDATE swarm_tasks SET
        lane = CASE WHEN status IN ('pending', 'requeue', 'queued', 'pending_review')
            AND lease_expires_at IS NULL THEN 'full' END,
        not_before = (doc ->> 'not_before')::double precision,
        parallel_safe = coalesce((doc ->> 'parallel_safe')::boolean, true),
        lease_host = doc -> 'lease' ->> 'host';
    DROP INDEX IF EXISTS swarm_tasks_status;
    CREATE INDEX swarm_tasks_fast_lane ON swarm_tasks (position) WHERE lane = 'fast';
    CREATE INDEX swarm_tasks_full_lane ON swarm_tasks (id) WHERE lane = 'full';
    CREATE INDEX swarm_tasks_alone_lane ON swarm_tasks (position) WHERE lane = 'alone';
    CREATE INDEX swarm_tasks_leased ON swarm_tasks (lease_expires_at)
        WHERE lease_expires_at IS NOT NULL;
    CREATE INDEX swarm_tasks_written ON swarm_tasks (written_by);
    ALTER TABLE swarm_outcomes
        ADD COLUMN written_by xid8 NOT NULL DEFAULT pg_current_xact_id(),
        DROP COLUMN changed;
    CREATE INDEX swarm_outcomes_written ON swarm_outcomes (written_by);
    ALTER TABLE swarm_archive
        ADD COLUMN written_by xid8 NOT NULL DEFAULT pg_current_xact_id(),
        DROP COLUMN changed;
    CREATE INDEX swarm_archive_written ON swarm_archive (written_by);
    ALTER TABLE swarm_queue DROP COLUMN changes;
    CREATE TABLE swarm_dependencies (
        dependency text NOT NULL,
        task_id text NOT NULL,
        PRIMARY KEY (dependency, task_id)
    );
    CREATE INDEX swarm_dependencies_task ON swarm_dependencies (task_id);
    INSERT INTO swarm_dependencies (dependency, task_id)
        SELECT DISTINCT json_array_elements_text(doc -> 'depends_on'), id FROM swarm_tasks
        WHERE json_typeof(doc -> 'depends_on') = 'array';
    CREATE INDEX swarm_events_status ON swarm_events (status, id);
    CREATE INDEX swarm_events_worker ON swarm_events (worker_id, id);
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(conn: Connection[Any]) -> int:
    """Bring the schema to SCHEMA_VERSION in one transaction; returns the version found."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        conn.execute("CREATE TABLE IF NOT EXISTS swarm_schema (version integer NOT NULL)")
        found = schema_version(conn)
        for step in MIGRATIONS[found:]:
            conn.execute(step)
        if found == 0:
            conn.execute("INSERT INTO swarm_schema (version) VALUES (%s)", (SCHEMA_VERSION,))
        elif found < SCHEMA_VERSION:
            conn.execute("UPDATE swarm_schema SET version = %s", (SCHEMA_VERSION,))
    return found


def schema_version(conn: Connection[Any]) -> int:
    """0 for a database the runtime has not set up yet."""
    found = conn.execute("SELECT to_regclass('swarm_schema') IS NOT NULL").fetchone()
    if not found or not found[0]:
        return 0
    row = conn.execute("SELECT max(version) FROM swarm_schema").fetchone()
    return int(row[0] or 0) if row else 0
