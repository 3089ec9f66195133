-- Version 1 as it shipped: jobs, balances and the functions of that version.
-- A test fixture (see tests/stores/_pg_history.py), never shipped.
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

-- Add credits (negative: take), never below zero; returns the new balance.
CREATE OR REPLACE FUNCTION {schema}.credit(p_account text, p_amount bigint)
RETURNS bigint LANGUAGE sql AS $fn$
    INSERT INTO {schema}.balances AS b (account, credits)
    VALUES (p_account, greatest(0, p_amount))
    ON CONFLICT (account) DO UPDATE SET credits = greatest(0, b.credits + p_amount)
    RETURNING credits
$fn$;

-- One call of Ledger.charge: the table of DESIGN section 2. Returns the status,
-- the balance as read before any change, and the record as found (all NULL
-- when there was none). Locks: the job's row first, then the balance row;
-- every function takes them in that order, so they cannot deadlock.
CREATE OR REPLACE FUNCTION {schema}.claim(
    p_account text, p_scope text, p_job_id text, p_charge_id text, p_cost bigint,
    p_tier text, p_backend text, p_now double precision, p_ttl double precision,
    p_lease double precision, p_max_uses bigint, p_balances boolean,
    OUT status text, OUT balance bigint,
    OUT o_charge_id text, OUT o_state text, OUT o_cost bigint, OUT o_tier text,
    OUT o_backend text, OUT o_charged_at double precision,
    OUT o_expires_at double precision, OUT o_lease_until double precision,
    OUT o_uses bigint, OUT o_debited bigint)
LANGUAGE plpgsql AS $fn$
DECLARE
    cur {schema}.jobs%ROWTYPE;
    v_debit bigint := CASE WHEN p_balances THEN p_cost ELSE 0 END;
    v_delta bigint := 0;
BEGIN
    balance := 0;
    LOOP
        -- Most calls open a new job: try to take the key first. A record
        -- already there (or a concurrent caller inserting first) makes this
        -- a no-op, and the SELECT below locks that record instead.
        INSERT INTO {schema}.jobs (account, scope, job_id, charge_id, state, cost,
                tier, backend, charged_at, expires_at, lease_until, uses, debited, deadline)
        VALUES (p_account, p_scope, p_job_id, p_charge_id, 'pending', p_cost,
                p_tier, p_backend, p_now, p_now + p_ttl, p_now + p_lease, 1, v_debit,
                p_now + p_lease)
        ON CONFLICT DO NOTHING;
        IF FOUND THEN
            IF p_balances AND p_cost <> 0 THEN
                UPDATE {schema}.balances SET credits = credits - p_cost
                 WHERE account = p_account AND credits >= p_cost
                RETURNING credits + p_cost INTO balance;
                IF NOT FOUND THEN
                    -- insufficient: nothing is recorded
                    balance := coalesce(
                        (SELECT credits FROM {schema}.balances WHERE account = p_account), 0);
                    DELETE FROM {schema}.jobs
                     WHERE account = p_account AND scope = p_scope AND job_id = p_job_id;
                    status := 'insufficient';
                    RETURN;
                END IF;
            ELSIF p_balances THEN
                balance := coalesce(
                    (SELECT credits FROM {schema}.balances WHERE account = p_account), 0);
            END IF;
            status := 'charged';
            RETURN;
        END IF;
        SELECT * INTO cur FROM {schema}.jobs
         WHERE account = p_account AND scope = p_scope AND job_id = p_job_id
           FOR UPDATE;
        EXIT WHEN FOUND;
        -- the record went away between the two statements: try again
    END LOOP;

    o_charge_id := cur.charge_id; o_state := cur.state; o_cost := cur.cost;
    o_tier := cur.tier; o_backend := cur.backend; o_charged_at := cur.charged_at;
    o_expires_at := cur.expires_at; o_lease_until := cur.lease_until;
    o_uses := cur.uses; o_debited := cur.debited;

    IF (cur.state = 'pending' AND p_now < cur.lease_until)
       OR (cur.state = 'charged' AND p_now < cur.expires_at) THEN
        IF p_balances THEN
            balance := coalesce(
                (SELECT credits FROM {schema}.balances WHERE account = p_account), 0);
        END IF;
        IF cur.state = 'pending' THEN
            status := 'in_progress';
        ELSIF p_max_uses IS NOT NULL AND cur.uses >= p_max_uses THEN
            status := 'exhausted';
        ELSE
            UPDATE {schema}.jobs SET uses = uses + 1
             WHERE account = p_account AND scope = p_scope AND job_id = p_job_id;
            status := 'reused';
        END IF;
        RETURN;
    END IF;

    -- A stale pending charge is refunded; an expired charged one just ends.
    IF cur.state = 'pending' THEN
        v_delta := cur.debited;
    END IF;
    IF p_balances THEN
        SELECT credits INTO balance FROM {schema}.balances
         WHERE account = p_account FOR UPDATE;
        balance := coalesce(balance, 0);
        IF balance + v_delta < p_cost THEN
            -- insufficient: the settlement of the old record still commits
            DELETE FROM {schema}.jobs
             WHERE account = p_account AND scope = p_scope AND job_id = p_job_id;
            IF v_delta <> 0 THEN
                PERFORM {schema}.credit(p_account, v_delta);
            END IF;
            status := 'insufficient';
            RETURN;
        END IF;
    END IF;
    UPDATE {schema}.jobs
       SET charge_id = p_charge_id, state = 'pending', cost = p_cost, tier = p_tier,
           backend = p_backend, charged_at = p_now, expires_at = p_now + p_ttl,
           lease_until = p_now + p_lease, uses = 1, debited = v_debit,
           deadline = p_now + p_lease
     WHERE account = p_account AND scope = p_scope AND job_id = p_job_id;
    IF v_delta - v_debit <> 0 THEN
        PERFORM {schema}.credit(p_account, v_delta - v_debit);
    END IF;
    status := 'charged';
END
$fn$;

-- confirm: pending -> charged when the charge id matches; returns the record
-- as found (found = false when there is none).
CREATE OR REPLACE FUNCTION {schema}.confirm(
    p_account text, p_scope text, p_job_id text, p_charge_id text,
    OUT hit boolean,
    OUT o_charge_id text, OUT o_state text, OUT o_cost bigint, OUT o_tier text,
    OUT o_backend text, OUT o_charged_at double precision,
    OUT o_expires_at double precision, OUT o_lease_until double precision,
    OUT o_uses bigint, OUT o_debited bigint)
LANGUAGE plpgsql AS $fn$
DECLARE
    cur {schema}.jobs%ROWTYPE;
BEGIN
    SELECT * INTO cur FROM {schema}.jobs
     WHERE account = p_account AND scope = p_scope AND job_id = p_job_id
       FOR UPDATE;
    hit := FOUND;
    IF NOT hit THEN
        RETURN;
    END IF;
    o_charge_id := cur.charge_id; o_state := cur.state; o_cost := cur.cost;
    o_tier := cur.tier; o_backend := cur.backend; o_charged_at := cur.charged_at;
    o_expires_at := cur.expires_at; o_lease_until := cur.lease_until;
    o_uses := cur.uses; o_debited := cur.debited;
    IF cur.state = 'pending' AND (p_charge_id IS NULL OR cur.charge_id = p_charge_id) THEN
        UPDATE {schema}.jobs SET state = 'charged', deadline = cur.expires_at
         WHERE account = p_account AND scope = p_scope AND job_id = p_job_id;
    END IF;
END
$fn$;

-- refund: delete the live record (matching charge id) and give back what it
-- debited; returns the record deleted (found = false when nothing was).
CREATE OR REPLACE FUNCTION {schema}.refund(
    p_account text, p_scope text, p_job_id text, p_charge_id text,
    p_now double precision,
    OUT hit boolean,
    OUT o_charge_id text, OUT o_state text, OUT o_cost bigint, OUT o_tier text,
    OUT o_backend text, OUT o_charged_at double precision,
    OUT o_expires_at double precision, OUT o_lease_until double precision,
    OUT o_uses bigint, OUT o_debited bigint)
LANGUAGE plpgsql AS $fn$
DECLARE
    cur {schema}.jobs%ROWTYPE;
BEGIN
    DELETE FROM {schema}.jobs
     WHERE account = p_account AND scope = p_scope AND job_id = p_job_id
       AND (p_charge_id IS NULL OR charge_id = p_charge_id)
       AND p_now < expires_at
    RETURNING * INTO cur;
    hit := FOUND;
    IF NOT hit THEN
        RETURN;
    END IF;
    o_charge_id := cur.charge_id; o_state := cur.state; o_cost := cur.cost;
    o_tier := cur.tier; o_backend := cur.backend; o_charged_at := cur.charged_at;
    o_expires_at := cur.expires_at; o_lease_until := cur.lease_until;
    o_uses := cur.uses; o_debited := cur.debited;
    IF cur.debited <> 0 THEN
        PERFORM {schema}.credit(p_account, cur.debited);
    END IF;
END
$fn$;

-- prune: settle up to p_limit due records. Rows another session holds are
-- skipped (SKIP LOCKED), so pruners running at once never settle a record
-- twice; refunds are credited per account in account order (no deadlocks).
CREATE OR REPLACE FUNCTION {schema}.prune(p_now double precision, p_limit integer)
RETURNS SETOF {schema}.jobs LANGUAGE sql AS $fn$
    WITH due AS (
        SELECT account, scope, job_id FROM {schema}.jobs
         WHERE deadline <= p_now
         ORDER BY deadline
         LIMIT p_limit
           FOR UPDATE SKIP LOCKED
    ), gone AS (
        DELETE FROM {schema}.jobs j USING due
         WHERE j.account = due.account AND j.scope = due.scope AND j.job_id = due.job_id
        RETURNING j.*
    ), credited AS (
        INSERT INTO {schema}.balances AS b (account, credits)
        SELECT account, sum(debited) FROM gone
         WHERE state = 'pending' AND debited <> 0
         GROUP BY account ORDER BY account
        ON CONFLICT (account) DO UPDATE SET credits = b.credits + excluded.credits
        RETURNING 1
    )
    SELECT * FROM gone ORDER BY deadline, account, scope, job_id
$fn$;
