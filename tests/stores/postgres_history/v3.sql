-- Version 3 as it shipped: grant_credits refuses a grant past MAX_CREDITS.
-- A test fixture (see tests/stores/_pg_history.py), never shipped.
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
    RETURN v_after;
END
$fn$;
