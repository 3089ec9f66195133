-- Version 5 as it shipped: balances read under the row lock (claim, refund,
-- prune; journal_balance).
-- A test fixture (see tests/stores/_pg_history.py), never shipped.
-- The account's stored balance for a journal entry that moves nothing, read
-- under a share lock on the balance row (held until the calling transaction
-- ends): a change of the balance (a grant, a debit, a refund) waits for it,
-- so it is numbered after this entry, or commits before this read and is
-- counted in it. Entries that move nothing do not wait for each other. A
-- caller that goes on to change the balance takes the row lock itself
-- instead (a share lock upgraded by two sessions at once would deadlock).
CREATE OR REPLACE FUNCTION {schema}.journal_balance(p_account text)
RETURNS bigint LANGUAGE sql AS $fn$
    SELECT coalesce(
        (SELECT credits FROM {schema}.balances WHERE account = p_account FOR SHARE), 0)
$fn$;

-- claim, as in version 2, except that every balance it decides on or
-- journals is read under the balance row's lock (see above).
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
                -- Lock, read, then decide on what was read, and report it:
                -- nothing can move the balance between the decision and the
                -- answer.
                SELECT credits INTO balance FROM {schema}.balances
                 WHERE account = p_account FOR NO KEY UPDATE;
                balance := coalesce(balance, 0);
                IF balance < p_cost THEN
                    -- insufficient: nothing is recorded, nothing journaled
                    DELETE FROM {schema}.jobs
                     WHERE account = p_account AND scope = p_scope AND job_id = p_job_id;
                    status := 'insufficient';
                    RETURN;
                END IF;
                UPDATE {schema}.balances SET credits = credits - p_cost
                 WHERE account = p_account;
                v_stored := balance - p_cost;
            ELSIF p_journal THEN
                v_stored := {schema}.journal_balance(p_account);
                IF p_balances THEN
                    balance := v_stored;
                END IF;
            ELSIF p_balances THEN
                balance := coalesce(
                    (SELECT credits FROM {schema}.balances WHERE account = p_account), 0);
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
                v_stored := {schema}.journal_balance(p_account);
                IF p_balances THEN
                    balance := v_stored;
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
         WHERE account = p_account FOR NO KEY UPDATE;
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
        v_stored := {schema}.journal_balance(p_account);
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

-- refund, as in version 2, except that a refund of nothing debited reads the
-- balance it journals under the row lock.
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
        v_stored := {schema}.journal_balance(p_account);
    END IF;
    IF p_journal THEN
        INSERT INTO {schema}.journal (kind, account, scope, job_id, charge_id, cost,
                tier, backend, delta, balance, at)
        VALUES ('refund', p_account, p_scope, p_job_id, cur.charge_id, cur.cost,
                cur.tier, cur.backend, cur.debited, v_stored, p_now);
    END IF;
END
$fn$;

-- prune: settle up to p_limit due records (SKIP LOCKED: pruners running at
-- once never settle a record twice), then, when journaling, lock the
-- balance rows of every account settled, in account order (job rows first,
-- then balance rows, like every function: no deadlock), credit the refunds,
-- and journal one row per settled record in the order the records are
-- returned, each with its account's running balance: the balance read after
-- the credits (a later statement, so a fresh snapshot, under the locks)
-- minus the deltas of the account's rows that follow it.
CREATE OR REPLACE FUNCTION {schema}.prune(
    p_now double precision, p_limit integer, p_journal boolean)
RETURNS SETOF {schema}.jobs LANGUAGE plpgsql AS $fn$
DECLARE
    v_gone {schema}.jobs[];
BEGIN
    WITH due AS (
        SELECT account, scope, job_id FROM {schema}.jobs
         WHERE deadline <= p_now
         ORDER BY deadline
         LIMIT p_limit
           FOR UPDATE SKIP LOCKED
    ), gone AS (
        DELETE FROM {schema}.jobs j USING due
         WHERE j.account = due.account AND j.scope = due.scope AND j.job_id = due.job_id
        RETURNING j AS rec
    )
    SELECT array_agg(g.rec ORDER BY (g.rec).deadline, (g.rec).account, (g.rec).scope,
                     (g.rec).job_id)
      INTO v_gone FROM gone g;
    IF v_gone IS NULL THEN
        RETURN;
    END IF;
    IF p_journal THEN
        PERFORM 1 FROM {schema}.balances
          WHERE account IN (SELECT g.account FROM unnest(v_gone) g)
          ORDER BY account
            FOR NO KEY UPDATE;
    END IF;
    INSERT INTO {schema}.balances AS b (account, credits)
    SELECT g.account, sum(g.debited) FROM unnest(v_gone) g
     WHERE g.state = 'pending' AND g.debited <> 0
     GROUP BY g.account ORDER BY g.account
    ON CONFLICT (account) DO UPDATE SET credits = b.credits + excluded.credits;
    IF p_journal THEN
        INSERT INTO {schema}.journal (kind, account, scope, job_id, charge_id, cost,
                tier, backend, delta, balance, at)
        SELECT CASE WHEN s.state = 'pending' THEN 'refund' ELSE 'expire' END,
               s.account, s.scope, s.job_id, s.charge_id, s.cost, s.tier, s.backend,
               s.delta,
               coalesce(bal.credits, 0)
                 - coalesce(sum(s.delta) OVER (PARTITION BY s.account ORDER BY s.n
                            ROWS BETWEEN 1 FOLLOWING AND UNBOUNDED FOLLOWING), 0),
               p_now
          FROM (SELECT g.*,
                       CASE WHEN g.state = 'pending' THEN g.debited ELSE 0 END AS delta,
                       row_number() OVER (ORDER BY g.deadline, g.account, g.scope, g.job_id)
                         AS n
                  FROM unnest(v_gone) g) s
          LEFT JOIN {schema}.balances bal ON bal.account = s.account
         ORDER BY s.n;
    END IF;
    RETURN QUERY SELECT * FROM unnest(v_gone) g
                  ORDER BY g.deadline, g.account, g.scope, g.job_id;
END
$fn$;
