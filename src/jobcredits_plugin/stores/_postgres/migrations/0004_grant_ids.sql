-- Version 4: grant ids (Ledger.grant(..., grant_id=)). grants remembers each
-- (account, grant_id) with its amount and the balance it answered, for
-- GRANT_ID_RETENTION seconds (by the ledger's clock); prune deletes older
-- rows through forget_grants (functions.sql).

CREATE TABLE {schema}.grants (
    account  text COLLATE "C" NOT NULL,
    grant_id text COLLATE "C" NOT NULL,
    amount   bigint NOT NULL,
    balance  bigint NOT NULL,
    at       double precision NOT NULL,
    PRIMARY KEY (account, grant_id)
);
CREATE INDEX grants_at ON {schema}.grants (at);
