-- Version 2: the journal (see "The journal" in PostgresStore's docstring and
-- docs/postgres.md). Writers append rows with seq NULL in the same function
-- call (so the same transaction) as the change; read_journal numbers them
-- (see sequence_journal in functions.sql).

CREATE TABLE {schema}.journal (
    id        bigserial PRIMARY KEY,
    -- NULL until read_journal numbers the row; then consecutive, never reused
    seq       bigint UNIQUE,
    kind      text NOT NULL CHECK (kind IN ('charge', 'reuse', 'refund', 'expire', 'grant')),
    account   text COLLATE "C" NOT NULL,
    scope     text COLLATE "C",
    job_id    text COLLATE "C",
    charge_id text NOT NULL,
    cost      bigint NOT NULL,
    tier      text,
    backend   text,
    delta     bigint NOT NULL,
    balance   bigint NOT NULL,
    at        double precision NOT NULL
);
CREATE INDEX journal_unsequenced ON {schema}.journal (id) WHERE seq IS NULL;

CREATE TABLE {schema}.journal_cursors (
    name       text COLLATE "C" NOT NULL PRIMARY KEY,
    position   bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- The last seq handed out: kept apart from the journal so that seq never goes
-- back, even after a trim has emptied the journal.
CREATE TABLE {schema}.journal_state (
    one      boolean PRIMARY KEY DEFAULT true CHECK (one),
    last_seq bigint NOT NULL
);
INSERT INTO {schema}.journal_state (one, last_seq) VALUES (true, 0);
