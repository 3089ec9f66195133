-- Every function of the store's schema, each written once. The store's
-- migrate() runs this file after the schema steps of migrations/, in the
-- same transaction, every time it runs, so a schema at any version ends up
-- with exactly these functions, and a function fresh and upgraded schemas
-- share is the same everywhere. Hence CREATE OR REPLACE throughout, and no
-- change here that a function's existing signature cannot take (a new
-- parameter or result column is a new overload, or a DROP FUNCTION in a
-- migration). A change of what a function does needs a new schema version
-- too: code of the version before refuses a newer schema, so it cannot
-- re-apply its own, older bodies during a rolling upgrade.
--
-- Placeholders, filled in by the store (psycopg.sql): {schema} the schema
-- (an identifier), {schema_name} its name (a literal), {lock_class} and
-- {reply_lock} the first keys of the journal's and the replies' advisory
-- locks. No other braces may appear in this file.
--
-- Locks: every function takes a job's row first, then the account's balance
-- row, so they cannot deadlock.
--
-- Signatures kept for rolling upgrades: each schema version kept the
-- signatures the version before called, so that processes still running the
-- previous code keep working while the new code rolls out: claim, refund and
-- prune without journal flags (version 1), grant_credits without a retention
-- (version 3), and claim, refund and prune without an operation id
-- (version 5). The current code calls the operation-id overloads, which run
-- the version-5 functions.


-- -- balances ------------------------------------------------------------------------------

-- Add credits (negative: take), never below zero; returns the new balance.
-- What the other functions credit refunds with (it writes no journal row:
-- the caller does).
CREATE OR REPLACE FUNCTION {schema}.credit(p_account text, p_amount bigint)
RETURNS bigint LANGUAGE sql AS $fn$
    INSERT INTO {schema}.balances AS b (account, credits)
    VALUES (p_account, greatest(0, p_amount))
    ON CONFLICT (account) DO UPDATE SET credits = greatest(0, b.credits + p_amount)
    RETURNING credits
$fn$;

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

-- A grant: add credits (negative: take), never below zero; journals what was
-- asked (cost) and what really moved (delta). Answers (status, balance):
-- 'ok' and the new balance; with a grant id (p_keep > 0 and a non-empty
-- p_grant_id) 'replay' (a repeat within p_keep seconds: nothing written, the
-- first grant's balance) or 'conflict' (the same id with another amount:
-- nothing written, balance = the first amount). The id is checked under the
-- balance row's lock, before the cap, so two concurrent grants with one id
-- take turns and the second finds the first's row.
--
-- A grant that adds credits is refused, with nothing written, when it would
-- take the balance past MAX_CREDITS (2**53 - 1, the most every store holds
-- exactly): SQLSTATE JC001 (a class PostgreSQL never uses), the balance
-- before in its DETAIL. The check runs under the balance row's lock, so two
-- grants racing cannot both pass it. Written without an overflow: a balance
-- that refunds took past the cap still compares correctly. Grants that take
-- credits away are never refused.
CREATE OR REPLACE FUNCTION {schema}.grant_credits(
    p_account text, p_amount bigint, p_now double precision, p_grant_id text,
    p_journal boolean, p_keep double precision,
    OUT status text, OUT balance bigint)
LANGUAGE plpgsql AS $fn$
DECLARE
    v_before bigint;
    v_after bigint;
    g {schema}.grants%ROWTYPE;
BEGIN
    INSERT INTO {schema}.balances (account, credits) VALUES (p_account, 0)
    ON CONFLICT (account) DO NOTHING;
    SELECT credits INTO v_before FROM {schema}.balances WHERE account = p_account FOR UPDATE;
    IF p_keep > 0 AND p_grant_id <> '' THEN
        SELECT * INTO g FROM {schema}.grants
         WHERE account = p_account AND grant_id = p_grant_id;
        IF FOUND AND p_now < g.at + p_keep THEN
            IF g.amount <> p_amount THEN
                status := 'conflict';
                balance := g.amount;
            ELSE
                status := 'replay';
                balance := g.balance;
            END IF;
            RETURN;
        END IF;
    END IF;
    IF p_amount > 0 AND v_before > 9007199254740991 - p_amount THEN
        RAISE EXCEPTION 'jobcredits: grant past the balance cap'
            USING ERRCODE = 'JC001', DETAIL = v_before::text;
    END IF;
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
    IF p_keep > 0 AND p_grant_id <> '' THEN
        INSERT INTO {schema}.grants AS o (account, grant_id, amount, balance, at)
        VALUES (p_account, p_grant_id, p_amount, v_after, p_now)
        ON CONFLICT (account, grant_id) DO UPDATE
            SET amount = excluded.amount, balance = excluded.balance, at = excluded.at;
    END IF;
    status := 'ok';
    balance := v_after;
END
$fn$;

-- The grant of versions 2 and 3 (no grant ids), for processes still running
-- that code: the grant above, remembering no id.
CREATE OR REPLACE FUNCTION {schema}.grant_credits(
    p_account text, p_amount bigint, p_now double precision, p_grant_id text,
    p_journal boolean)
RETURNS bigint LANGUAGE sql AS $fn$
    SELECT g.balance
      FROM {schema}.grant_credits(p_account, p_amount, p_now, p_grant_id, p_journal, 0) g
$fn$;

-- Delete up to p_limit grant ids past their retention (at + p_keep <= p_now,
-- the same test as grant_credits'; the first bound, a second looser, uses the
-- index).
CREATE OR REPLACE FUNCTION {schema}.forget_grants(
    p_now double precision, p_keep double precision, p_limit integer)
RETURNS bigint LANGUAGE plpgsql AS $fn$
DECLARE
    v_count bigint;
BEGIN
    DELETE FROM {schema}.grants
     WHERE (account, grant_id) IN (
        SELECT account, grant_id FROM {schema}.grants
         WHERE at <= p_now - p_keep + 1 AND at + p_keep <= p_now
         LIMIT p_limit
           FOR UPDATE SKIP LOCKED);
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN v_count;
END
$fn$;


-- -- jobs --------------------------------------------------------------------------------

-- One call of Ledger.charge: the table of DESIGN section 2. Returns the status,
-- the balance as read before any change, and the record as found (all NULL
-- when there was none).
--
-- Journals one row per committed event, in the order the rules report them,
-- each with the account's stored balance right after it (read even when
-- balances are off). Refused calls write nothing; an insufficient takeover
-- still journals the refund (or expiry) it commits.
--
-- Every balance it decides on or journals is read under the balance row's
-- lock: a new job's debit locks and reads the row first, decides on that
-- value and reports it (a separate read after a failed conditional UPDATE
-- could see a grant committed in between, and report a sufficient balance
-- for a refused claim); an entry that moves nothing reads journal_balance.
--
-- Long because it is the whole operation in one call: taking a new job,
-- answering a live one (409, the max-uses refusal, a reuse) and taking over a
-- stale or expired one all decide under the same row locks in one round
-- trip, and each helper function it called would cost every charge a call.
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

-- confirm: pending -> charged when the charge id matches; returns the record
-- as found (hit = false when there is none).
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
-- debited, with its journal row; returns the record deleted (hit = false
-- when nothing was). A refund of nothing debited reads the balance it
-- journals under the row lock (journal_balance).
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
-- then balance rows, like every function: no deadlock), credit the refunds
-- (per account, in account order), and journal one row per settled record in
-- the order the records are returned (which is the order of the events), each
-- with its account's running balance: the balance read after the credits (a
-- later statement, so a fresh snapshot, under the locks) minus the deltas of
-- the account's rows that follow it. (A little over sixty lines: one
-- statement for each of these steps.)
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

-- The version-1 signatures, for processes still running that code: they
-- journal with the default settings (their grants are not journaled:
-- version 1 granted through credit, which cannot journal).
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


-- -- the journal ---------------------------------------------------------------------------

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

CREATE OR REPLACE FUNCTION {schema}.read_journal(
    p_after bigint, p_limit integer, p_batch integer)
RETURNS SETOF {schema}.journal LANGUAGE plpgsql AS $fn$
BEGIN
    PERFORM {schema}.sequence_journal(p_batch);
    RETURN QUERY SELECT * FROM {schema}.journal
                  WHERE seq > p_after ORDER BY seq LIMIT p_limit;
END
$fn$;

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


-- -- replies (lost answers) ----------------------------------------------------------------
--
-- Each claim, refund and prune batch carries an operation id the client
-- draws per call (128 random bits) and re-sends on its retry. The overloads
-- below take the id (and the retention, p_keep seconds by the operation's
-- now: the ledger's clock, or the server's with server_clock) and wrap the
-- version-5 functions: under a transaction-scoped advisory lock of the id
-- (so a retry that reaches the server while the original still runs waits
-- for it to end), they look the id up in replies; found, they answer what
-- the original answered and do nothing else; not found, they run the
-- operation and, when it wrote anything, keep its answer (the status, the
-- balance and the records it found, which are all the Python side needs to
-- rebuild the very events the original committed) in the same transaction.
-- An outcome that wrote nothing (409, a plain 402, a refund or prune batch
-- that found nothing) keeps no reply: its retry decides afresh, as nothing
-- committed. One reply written in sixteen deletes up to 32 replies past
-- their retention (SKIP LOCKED), and prune deletes them in batches through
-- forget_replies, so the table holds about the retention's worth of
-- operations however the store is used.

CREATE OR REPLACE FUNCTION {schema}.forget_replies(
    p_now double precision, p_keep double precision, p_limit integer)
RETURNS bigint LANGUAGE plpgsql AS $fn$
DECLARE
    v_count bigint;
BEGIN
    -- by ctid: a TID scan, whatever the planner thinks of the table's size
    DELETE FROM {schema}.replies
     WHERE ctid = ANY (ARRAY(
        SELECT ctid FROM {schema}.replies
         WHERE at <= p_now - p_keep
         ORDER BY at
         LIMIT p_limit
           FOR UPDATE SKIP LOCKED));
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN v_count;
END
$fn$;

CREATE OR REPLACE FUNCTION {schema}.keep_reply(
    p_op_id text, p_now double precision, p_keep double precision, p_status text,
    p_balance bigint, p_records {schema}.job_image[])
RETURNS void LANGUAGE plpgsql AS $fn$
BEGIN
    INSERT INTO {schema}.replies (op_id, at, r_status, r_balance, r_records)
    VALUES (p_op_id, p_now, p_status, p_balance, p_records);
    IF left(p_op_id, 1) = '0' THEN
        PERFORM {schema}.forget_replies(p_now, p_keep, 32);
    END IF;
END
$fn$;

-- The ten o_* columns a claim or refund answers, from a record kept in a
-- reply (all NULL for NULL: a reply that found none).
CREATE OR REPLACE FUNCTION {schema}.image_columns(
    p_image {schema}.job_image,
    OUT o_charge_id text, OUT o_state text, OUT o_cost bigint, OUT o_tier text,
    OUT o_backend text, OUT o_charged_at double precision,
    OUT o_expires_at double precision, OUT o_lease_until double precision,
    OUT o_uses bigint, OUT o_debited bigint)
LANGUAGE sql IMMUTABLE AS $fn$
    SELECT (p_image).charge_id, (p_image).state, (p_image).cost, (p_image).tier,
           (p_image).backend, (p_image).charged_at, (p_image).expires_at,
           (p_image).lease_until, (p_image).uses, (p_image).debited
$fn$;

CREATE OR REPLACE FUNCTION {schema}.claim(
    p_account text, p_scope text, p_job_id text, p_charge_id text, p_cost bigint,
    p_tier text, p_backend text, p_now double precision, p_ttl double precision,
    p_lease double precision, p_max_uses bigint, p_balances boolean,
    p_journal boolean, p_journal_reuses boolean, p_op_id text, p_keep double precision,
    OUT status text, OUT balance bigint,
    OUT o_charge_id text, OUT o_state text, OUT o_cost bigint, OUT o_tier text,
    OUT o_backend text, OUT o_charged_at double precision,
    OUT o_expires_at double precision, OUT o_lease_until double precision,
    OUT o_uses bigint, OUT o_debited bigint, OUT o_now double precision)
LANGUAGE plpgsql AS $fn$
DECLARE
    r {schema}.replies%ROWTYPE;
BEGIN
    PERFORM pg_advisory_xact_lock({reply_lock}, hashtext(p_op_id));
    SELECT * INTO r FROM {schema}.replies WHERE op_id = p_op_id;
    IF FOUND THEN
        o_now := r.at;
        status := r.r_status;
        balance := r.r_balance;
        -- no record kept (an empty array): its first is NULL, and so are these
        SELECT * INTO o_charge_id, o_state, o_cost, o_tier, o_backend, o_charged_at,
               o_expires_at, o_lease_until, o_uses, o_debited
          FROM {schema}.image_columns(r.r_records[1]);
        RETURN;
    END IF;
    o_now := p_now;
    SELECT c.status, c.balance, c.o_charge_id, c.o_state, c.o_cost, c.o_tier, c.o_backend,
           c.o_charged_at, c.o_expires_at, c.o_lease_until, c.o_uses, c.o_debited
      INTO status, balance, o_charge_id, o_state, o_cost, o_tier, o_backend,
           o_charged_at, o_expires_at, o_lease_until, o_uses, o_debited
      FROM {schema}.claim(p_account, p_scope, p_job_id, p_charge_id, p_cost, p_tier,
                          p_backend, p_now, p_ttl, p_lease, p_max_uses, p_balances,
                          p_journal, p_journal_reuses) c;
    -- what wrote: a charge (a takeover's settlement included), a reuse, and a
    -- 402 that settled the record it found
    IF status IN ('charged', 'reused')
       OR (status = 'insufficient' AND o_charge_id IS NOT NULL) THEN
        PERFORM {schema}.keep_reply(p_op_id, p_now, p_keep, status, balance,
            CASE WHEN o_charge_id IS NULL THEN ARRAY[]::{schema}.job_image[]
                 ELSE ARRAY[ROW(p_account, p_scope, p_job_id, o_charge_id, o_state, o_cost,
                                o_tier, o_backend, o_charged_at, o_expires_at,
                                o_lease_until, o_uses, o_debited)::{schema}.job_image]
            END);
    END IF;
END
$fn$;

CREATE OR REPLACE FUNCTION {schema}.refund(
    p_account text, p_scope text, p_job_id text, p_charge_id text,
    p_now double precision, p_journal boolean, p_op_id text, p_keep double precision,
    OUT hit boolean,
    OUT o_charge_id text, OUT o_state text, OUT o_cost bigint, OUT o_tier text,
    OUT o_backend text, OUT o_charged_at double precision,
    OUT o_expires_at double precision, OUT o_lease_until double precision,
    OUT o_uses bigint, OUT o_debited bigint)
LANGUAGE plpgsql AS $fn$
DECLARE
    r {schema}.replies%ROWTYPE;
BEGIN
    PERFORM pg_advisory_xact_lock({reply_lock}, hashtext(p_op_id));
    SELECT * INTO r FROM {schema}.replies WHERE op_id = p_op_id;
    IF FOUND THEN
        hit := true;
        SELECT * INTO o_charge_id, o_state, o_cost, o_tier, o_backend, o_charged_at,
               o_expires_at, o_lease_until, o_uses, o_debited
          FROM {schema}.image_columns(r.r_records[1]);
        RETURN;
    END IF;
    SELECT x.hit, x.o_charge_id, x.o_state, x.o_cost, x.o_tier, x.o_backend,
           x.o_charged_at, x.o_expires_at, x.o_lease_until, x.o_uses, x.o_debited
      INTO hit, o_charge_id, o_state, o_cost, o_tier, o_backend,
           o_charged_at, o_expires_at, o_lease_until, o_uses, o_debited
      FROM {schema}.refund(p_account, p_scope, p_job_id, p_charge_id, p_now, p_journal) x;
    IF hit THEN
        PERFORM {schema}.keep_reply(p_op_id, p_now, p_keep, 'refunded', NULL,
            ARRAY[ROW(p_account, p_scope, p_job_id, o_charge_id, o_state, o_cost,
                      o_tier, o_backend, o_charged_at, o_expires_at,
                      o_lease_until, o_uses, o_debited)::{schema}.job_image]);
    END IF;
END
$fn$;

CREATE OR REPLACE FUNCTION {schema}.prune(
    p_now double precision, p_limit integer, p_journal boolean, p_op_id text,
    p_keep double precision)
RETURNS SETOF {schema}.job_image LANGUAGE plpgsql AS $fn$
DECLARE
    v_records {schema}.job_image[];
BEGIN
    PERFORM pg_advisory_xact_lock({reply_lock}, hashtext(p_op_id));
    SELECT r_records INTO v_records FROM {schema}.replies WHERE op_id = p_op_id;
    IF NOT FOUND THEN
        SELECT coalesce(array_agg(ROW(p.account, p.scope, p.job_id, p.charge_id, p.state,
                                      p.cost, p.tier, p.backend, p.charged_at, p.expires_at,
                                      p.lease_until, p.uses, p.debited)::{schema}.job_image
                                  ORDER BY p.deadline, p.account, p.scope, p.job_id),
                        ARRAY[]::{schema}.job_image[])
          INTO v_records
          FROM {schema}.prune(p_now, p_limit, p_journal) p;
        IF cardinality(v_records) > 0 THEN
            PERFORM {schema}.keep_reply(p_op_id, p_now, p_keep, 'pruned', NULL, v_records);
        END IF;
    END IF;
    RETURN QUERY SELECT u.account, u.scope, u.job_id, u.charge_id, u.state, u.cost, u.tier,
                        u.backend, u.charged_at, u.expires_at, u.lease_until, u.uses,
                        u.debited
                   FROM unnest(v_records) WITH ORDINALITY
                        AS u(account, scope, job_id, charge_id, state, cost, tier, backend,
                             charged_at, expires_at, lease_until, uses, debited, n)
                  ORDER BY u.n;
END
$fn$;
