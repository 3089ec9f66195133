-- Version 6 (issue 13): replies, so that a claim, refund or prune batch whose
-- answer was lost can be retried with the same operation id (see the
-- operation-id overloads in functions.sql). The records are kept as
-- job_image, a type of its own rather than the jobs row type, so that a later
-- migration may still add columns to jobs.

CREATE TYPE {schema}.job_image AS (
    account     text,
    scope       text,
    job_id      text,
    charge_id   text,
    state       text,
    cost        bigint,
    tier        text,
    backend     text,
    charged_at  double precision,
    expires_at  double precision,
    lease_until double precision,
    uses        bigint,
    debited     bigint
);

CREATE TABLE {schema}.replies (
    op_id     text COLLATE "C" NOT NULL PRIMARY KEY,
    at        double precision NOT NULL,  -- the operation's now (the ledger's clock)
    r_status  text NOT NULL,
    r_balance bigint,
    r_records {schema}.job_image[] NOT NULL
);
CREATE INDEX replies_at ON {schema}.replies (at);
