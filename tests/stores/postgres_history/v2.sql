-- Version 2 as it shipped: the journal. The functions take journal flags;
-- the version-1 signatures stay as wrappers that journal with the defaults.
-- A test fixture (see tests/stores/_pg_history.py), never shipped.
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

-- A grant: add credits (negative: take), never below zero; journals what was
-- asked (cost) and what really moved (delta). Returns the new balance.
CREATE OR REPLACE FUNCTION {schema}.grant_credits(
    p_account text, p_amount bigint, p_now double precision, p_grant_id text,
    p_journal boolean)
RETURNS bigint LANGUAGE plpgsql AS $fn$
DECLARE
    v_before bigint;
    v_after bigint;
BEGIN
    INSERT INTO {schema}.balances (account, credits) VALUES (p_account, 0)
    ON CONFLICT (account) DO NOTHING;
    SELECT credits INTO v_before FROM {schema}.balances WHERE account = p_account FOR UPDATE;
    v_after := greatest(0, v_before + p_amount);
    IF v_after <> v_before THEN
        UPDATE {schema}.balances SET credits = v_after WHERE account = p_account;
    END IF;
    IF p_journal THEN
        INSERT INTO {schema}.journal (kind, account, scope, job_id, charge_id, cost, tier,
                backend, delta, balance, at)
        VALUES ('grant', p_account, NULL, NULL, p_grant_id, p_amount, NULL, NULL,
                v_after - v_before, v_after, p_now);
    END IF;
    RETURN v_after;
END
$fn$;

-- claim, as in version 1, plus one journal row per committed event, in the
-- order the rules report them, each with the account's stored balance right
-- after it (read even when balances are off). Refused calls write nothing;
-- an insufficient takeover still journals the refund (or expiry) it commits.
CREATE OR REPLACE FUNCTION {schema}.claim(
    p_account text, p_scope text, p_job_id text, p_charge_id text, p_cost bigint,
    p_tier text, p_backend text, p_now double precision, p_ttl double precision,
    p_lease double precision, p_max_uses bigint, p_balances boolean,
    p_journal boolean, p_journal_reuses boolean,
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
    v_stored bigint := 0;  -- the account's stored balance after the last change
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
                    -- insufficient: nothing is recorded, nothing journaled
                    balance := coalesce(
                        (SELECT credits FROM {schema}.balances WHERE account = p_account), 0);
                    DELETE FROM {schema}.jobs
                     WHERE account = p_account AND scope = p_scope AND job_id = p_job_id;
                    status := 'insufficient';
                    RETURN;
                END IF;
                v_stored := balance - p_cost;
            ELSIF p_balances OR p_journal THEN
                v_stored := coalesce(
                    (SELECT credits FROM {schema}.balances WHERE account = p_account), 0);
                IF p_balances THEN
                    balance := v_stored;
                END IF;
            END IF;
            IF p_journal THEN
                INSERT INTO {schema}.journal (kind, account, scope, job_id, charge_id, cost,
                        tier, backend, delta, balance, at)
                VALUES ('charge', p_account, p_scope, p_job_id, p_charge_id, p_cost,
                        p_tier, p_backend, -v_debit, v_stored, p_now);
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
            IF p_journal AND p_journal_reuses THEN
                IF p_balances THEN
                    v_stored := balance;
                ELSE
                    v_stored := coalesce(
                        (SELECT credits FROM {schema}.balances WHERE account = p_account), 0);
                END IF;
                INSERT INTO {schema}.journal (kind, account, scope, job_id, charge_id, cost,
                        tier, backend, delta, balance, at)
                VALUES ('reuse', p_account, p_scope, p_job_id, cur.charge_id, cur.cost,
                        cur.tier, cur.backend, 0, v_stored, p_now);
            END IF;
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
                v_stored := {schema}.credit(p_account, v_delta);
            ELSE
                v_stored := balance;
            END IF;
            IF p_journal THEN
                INSERT INTO {schema}.journal (kind, account, scope, job_id, charge_id, cost,
                        tier, backend, delta, balance, at)
                VALUES (CASE WHEN cur.state = 'pending' THEN 'refund' ELSE 'expire' END,
                        p_account, p_scope, p_job_id, cur.charge_id, cur.cost,
                        cur.tier, cur.backend, v_delta, v_stored, p_now);
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
        v_stored := {schema}.credit(p_account, v_delta - v_debit);
    ELSIF p_balances THEN
        v_stored := balance;  -- read above under the row lock; nothing moved
    ELSIF p_journal THEN
        v_stored := coalesce(
            (SELECT credits FROM {schema}.balances WHERE account = p_account), 0);
    END IF;
    IF p_journal THEN
        -- the settlement, then the new charge; the balance in between is the
        -- final one before the debit (never clamped: the debit was checked)
        INSERT INTO {schema}.journal (kind, account, scope, job_id, charge_id, cost,
                tier, backend, delta, balance, at)
        VALUES (CASE WHEN cur.state = 'pending' THEN 'refund' ELSE 'expire' END,
                p_account, p_scope, p_job_id, cur.charge_id, cur.cost,
                cur.tier, cur.backend, v_delta, v_stored + v_debit, p_now);
        INSERT INTO {schema}.journal (kind, account, scope, job_id, charge_id, cost,
                tier, backend, delta, balance, at)
        VALUES ('charge', p_account, p_scope, p_job_id, p_charge_id, p_cost,
                p_tier, p_backend, -v_debit, v_stored, p_now);
    END IF;
    status := 'charged';
END
$fn$;

-- refund, as in version 1, plus its journal row.
CREATE OR REPLACE FUNCTION {schema}.refund(
    p_account text, p_scope text, p_job_id text, p_charge_id text,
    p_now double precision, p_journal boolean,
    OUT hit boolean,
    OUT o_charge_id text, OUT o_state text, OUT o_cost bigint, OUT o_tier text,
    OUT o_backend text, OUT o_charged_at double precision,
    OUT o_expires_at double precision, OUT o_lease_until double precision,
    OUT o_uses bigint, OUT o_debited bigint)
LANGUAGE plpgsql AS $fn$
DECLARE
    cur {schema}.jobs%ROWTYPE;
    v_stored bigint := 0;
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
        v_stored := {schema}.credit(p_account, cur.debited);
    ELSIF p_journal THEN
        v_stored := coalesce(
            (SELECT credits FROM {schema}.balances WHERE account = p_account), 0);
    END IF;
    IF p_journal THEN
        INSERT INTO {schema}.journal (kind, account, scope, job_id, charge_id, cost,
                tier, backend, delta, balance, at)
        VALUES ('refund', p_account, p_scope, p_job_id, cur.charge_id, cur.cost,
                cur.tier, cur.backend, cur.debited, v_stored, p_now);
    END IF;
END
$fn$;

-- prune, as in version 1, plus one journal row per settled record in the
-- order the records are returned (which is the order of the events). Each
-- account's balance after its last row is the credited balance (the upsert's
-- RETURNING, under its row lock) or, when nothing was credited, the stored
-- one; earlier rows subtract the deltas that follow them.
CREATE OR REPLACE FUNCTION {schema}.prune(
    p_now double precision, p_limit integer, p_journal boolean)
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
        RETURNING b.account, b.credits
    ), settled AS (
        SELECT g.*,
               CASE WHEN g.state = 'pending' THEN g.debited ELSE 0 END AS delta,
               row_number() OVER (ORDER BY g.deadline, g.account, g.scope, g.job_id) AS n
          FROM gone g
    ), journaled AS (
        INSERT INTO {schema}.journal (kind, account, scope, job_id, charge_id, cost,
                tier, backend, delta, balance, at)
        SELECT CASE WHEN s.state = 'pending' THEN 'refund' ELSE 'expire' END,
               s.account, s.scope, s.job_id, s.charge_id, s.cost, s.tier, s.backend,
               s.delta,
               coalesce(c.credits, bal.credits, 0)
                 - coalesce(sum(s.delta) OVER (PARTITION BY s.account ORDER BY s.n
                            ROWS BETWEEN 1 FOLLOWING AND UNBOUNDED FOLLOWING), 0),
               p_now
          FROM settled s
          LEFT JOIN credited c ON c.account = s.account
          LEFT JOIN {schema}.balances bal ON bal.account = s.account
         WHERE p_journal
         ORDER BY s.n
        RETURNING 1
    )
    SELECT * FROM gone ORDER BY deadline, account, scope, job_id
$fn$;

-- The version-1 signatures, kept for processes still running the old code
-- during an upgrade: they journal with the default settings.
CREATE OR REPLACE FUNCTION {schema}.claim(
    p_account text, p_scope text, p_job_id text, p_charge_id text, p_cost bigint,
    p_tier text, p_backend text, p_now double precision, p_ttl double precision,
    p_lease double precision, p_max_uses bigint, p_balances boolean,
    OUT status text, OUT balance bigint,
    OUT o_charge_id text, OUT o_state text, OUT o_cost bigint, OUT o_tier text,
    OUT o_backend text, OUT o_charged_at double precision,
    OUT o_expires_at double precision, OUT o_lease_until double precision,
    OUT o_uses bigint, OUT o_debited bigint)
LANGUAGE sql AS $fn$
    SELECT * FROM {schema}.claim(p_account, p_scope, p_job_id, p_charge_id, p_cost,
        p_tier, p_backend, p_now, p_ttl, p_lease, p_max_uses, p_balances, true, false)
$fn$;
CREATE OR REPLACE FUNCTION {schema}.refund(
    p_account text, p_scope text, p_job_id text, p_charge_id text,
    p_now double precision,
    OUT hit boolean,
    OUT o_charge_id text, OUT o_state text, OUT o_cost bigint, OUT o_tier text,
    OUT o_backend text, OUT o_charged_at double precision,
    OUT o_expires_at double precision, OUT o_lease_until double precision,
    OUT o_uses bigint, OUT o_debited bigint)
LANGUAGE sql AS $fn$
    SELECT * FROM {schema}.refund(p_account, p_scope, p_job_id, p_charge_id, p_now, true)
$fn$;
CREATE OR REPLACE FUNCTION {schema}.prune(p_now double precision, p_limit integer)
RETURNS SETOF {schema}.jobs LANGUAGE sql AS $fn$
    SELECT * FROM {schema}.prune(p_now, p_limit, true)
$fn$;

-- Number the journal: give seq to what can be numbered; returns how many.
--
-- Writers insert rows with seq NULL (no global lock on the hot path). An id
-- from the bigserial is no order a reader could follow: a transaction can
-- take id 5 and commit after the one that took id 6, and a reader already
-- past 6 would skip 5 forever. So seq is given here, by one sequencer at a
-- time (a transaction-scoped advisory lock of this schema's journal), from
-- the counter in journal_state, and only to rows this statement can see:
-- rows of committed transactions. A row of a transaction still in flight is
-- invisible, stays NULL, and is numbered by a later call, above every seq
-- handed out before; a rolled-back row is never seen, so it leaves no gap.
-- The numbers one sequencer gives become visible together when it commits,
-- and the next sequencer gets the lock only after that commit, so a reader
-- that has seen seq n can never find a new entry below n.
--
-- Visible rows are numbered in id order. For one account whose balance
-- moves, that is commit order: a writer inserts its entry after updating the
-- balance row, whose lock it holds until it commits, so the next writer of
-- that account takes a later id. Each entry's balance then follows the one
-- before it.
--
-- Snapshots: these functions are volatile and run in READ COMMITTED, so
-- every statement takes a fresh snapshot; the UPDATE's comes after the lock,
-- so it sees the numbers the previous sequencer committed before it released
-- the lock and never numbers a row twice. Numbering is idempotent: a retried
-- read is safe.
CREATE OR REPLACE FUNCTION {schema}.sequence_journal(p_batch integer)
RETURNS bigint LANGUAGE plpgsql AS $fn$
DECLARE
    v_last bigint;
    v_count bigint := 0;
BEGIN
    -- nothing to number: do not queue behind another sequencer
    IF NOT EXISTS (SELECT 1 FROM {schema}.journal WHERE seq IS NULL) THEN
        RETURN 0;
    END IF;
    PERFORM pg_advisory_xact_lock({lock_class}, hashtext({schema_name}));
    SELECT last_seq INTO v_last FROM {schema}.journal_state FOR UPDATE;
    WITH todo AS (
        SELECT id, row_number() OVER (ORDER BY id) AS n
          FROM {schema}.journal
         WHERE seq IS NULL
         ORDER BY id
         LIMIT p_batch
    )
    UPDATE {schema}.journal j SET seq = v_last + todo.n FROM todo WHERE j.id = todo.id;
    GET DIAGNOSTICS v_count = ROW_COUNT;
    IF v_count > 0 THEN
        UPDATE {schema}.journal_state SET last_seq = v_last + v_count;
    END IF;
    RETURN v_count;
END
$fn$;

-- Read the journal: number what can be numbered (above), then return up to
-- p_limit rows above p_after in seq order.
CREATE OR REPLACE FUNCTION {schema}.read_journal(
    p_after bigint, p_limit integer, p_batch integer)
RETURNS SETOF {schema}.journal LANGUAGE plpgsql AS $fn$
BEGIN
    PERFORM {schema}.sequence_journal(p_batch);
    RETURN QUERY SELECT * FROM {schema}.journal
                  WHERE seq > p_after ORDER BY seq LIMIT p_limit;
END
$fn$;

-- Trim: number what can be numbered (so an entry nobody read yet can age
-- out like in every store), then delete up to p_batch numbered rows with
-- seq <= p_through (no bound when NULL) and at < p_cutoff (no bound when
-- NULL), never one above the lowest cursor's position and never an
-- unnumbered one. Both bounds NULL delete nothing. The SHARE lock on the
-- cursors keeps a cursor from being created or moved back while the cap is
-- in use.
CREATE OR REPLACE FUNCTION {schema}.trim_journal(
    p_through bigint, p_cutoff double precision, p_batch integer)
RETURNS bigint LANGUAGE plpgsql AS $fn$
DECLARE
    v_cap bigint := p_through;
    v_count bigint;
BEGIN
    IF p_through IS NULL AND p_cutoff IS NULL THEN
        RETURN 0;
    END IF;
    PERFORM {schema}.sequence_journal(p_batch);
    LOCK TABLE {schema}.journal_cursors IN SHARE MODE;
    SELECT least(v_cap, min(position)) INTO v_cap FROM {schema}.journal_cursors;
    DELETE FROM {schema}.journal
     WHERE id IN (SELECT id FROM {schema}.journal
                   WHERE seq IS NOT NULL
                     AND (v_cap IS NULL OR seq <= v_cap)
                     AND (p_cutoff IS NULL OR at < p_cutoff)
                   ORDER BY seq
                   LIMIT p_batch);
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN v_count;
END
$fn$;
