-- Version 1: jobs and balances.
--
-- Text columns use the "C" collation: keys compare bytewise, the way every
-- other store and Python's own sort compare them, whatever the database's
-- locale, and the primary key index is cheaper to maintain.

CREATE TABLE {schema}.jobs (
    account     text COLLATE "C" NOT NULL,
    scope       text COLLATE "C" NOT NULL,
    job_id      text COLLATE "C" NOT NULL,
    charge_id   text NOT NULL,
    state       text NOT NULL CHECK (state IN ('pending', 'charged')),
    cost        bigint NOT NULL,
    tier        text,
    backend     text,
    charged_at  double precision NOT NULL,
    expires_at  double precision NOT NULL,
    lease_until double precision NOT NULL,
    uses        bigint NOT NULL,
    debited     bigint NOT NULL,
    -- when the record next needs attention: lease_until while pending,
    -- expires_at once charged (what prune scans, through the index below)
    deadline    double precision NOT NULL,
    PRIMARY KEY (account, scope, job_id)
);
CREATE INDEX jobs_deadline ON {schema}.jobs (deadline);

CREATE TABLE {schema}.balances (
    account text COLLATE "C" NOT NULL PRIMARY KEY,
    credits bigint NOT NULL CHECK (credits >= 0)
);
