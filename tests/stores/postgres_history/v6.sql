-- Version 6 as it shipped: replies (job_image, the replies table, the
-- operation-id overloads of claim, refund and prune).
-- A test fixture (see tests/stores/_pg_history.py), never shipped.
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

-- Delete up to p_limit replies past their retention (at <= p_now - p_keep).
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

-- Keep an operation's answer, and make room: one write in sixteen (those
-- whose random id starts with '0') deletes up to 32 replies past their
-- retention, two per write on average, more than each write adds, so
-- expired replies never pile up even without prune; a delete statement per
-- write would cost each claim a third more.
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

-- claim with an operation id: the version-5 claim, or the answer it gave
-- this operation id before. o_now is the now the answer was decided on (the
-- original's, for a retry): on the server's clock (server_clock) a retry
-- passes a later now, and the rules must replay on the original's to rebuild
-- the records it stored.
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
    f {schema}.job_image;
BEGIN
    PERFORM pg_advisory_xact_lock({reply_lock}, hashtext(p_op_id));
    SELECT * INTO r FROM {schema}.replies WHERE op_id = p_op_id;
    IF FOUND THEN
        o_now := r.at;
        status := r.r_status;
        balance := r.r_balance;
        IF cardinality(r.r_records) > 0 THEN
            f := r.r_records[1];
            o_charge_id := f.charge_id; o_state := f.state; o_cost := f.cost;
            o_tier := f.tier; o_backend := f.backend; o_charged_at := f.charged_at;
            o_expires_at := f.expires_at; o_lease_until := f.lease_until;
            o_uses := f.uses; o_debited := f.debited;
        END IF;
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

-- refund with an operation id: the version-5 refund, or the answer it gave
-- this operation id before (a newer charge of the job made meanwhile is
-- never touched by the retry).
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
    f {schema}.job_image;
BEGIN
    PERFORM pg_advisory_xact_lock({reply_lock}, hashtext(p_op_id));
    SELECT * INTO r FROM {schema}.replies WHERE op_id = p_op_id;
    IF FOUND THEN
        hit := true;
        f := r.r_records[1];
        o_charge_id := f.charge_id; o_state := f.state; o_cost := f.cost;
        o_tier := f.tier; o_backend := f.backend; o_charged_at := f.charged_at;
        o_expires_at := f.expires_at; o_lease_until := f.lease_until;
        o_uses := f.uses; o_debited := f.debited;
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

-- One prune batch with an operation id: the version-5 prune, or the records
-- it settled for this operation id before, in the same order. (A refund's
-- or a prune's events do not depend on the now they are rebuilt with, as
-- long as it is no earlier: neither answers the original's now.)
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
