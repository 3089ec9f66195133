-- Version 4 as it shipped: grant ids (the grants table, grant_credits with
-- a retention, forget_grants); the version-3 grant_credits stays.
-- A test fixture (see tests/stores/_pg_history.py), never shipped.
CREATE TABLE {schema}.grants (
    account  text COLLATE "C" NOT NULL,
    grant_id text COLLATE "C" NOT NULL,
    amount   bigint NOT NULL,
    balance  bigint NOT NULL,
    at       double precision NOT NULL,
    PRIMARY KEY (account, grant_id)
);
CREATE INDEX grants_at ON {schema}.grants (at);

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

-- Delete up to p_limit grant ids past their retention (at + p_keep <= p_now,
-- the same test as above; the first bound, a second looser, uses the index).
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
