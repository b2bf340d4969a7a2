-- PPLNS (`--pplns`, issue 18): every coinbase pays the miners of the window in proportion to their accepted share
-- difficulty; what a coinbase does not pay is carried as a balance, paid with a later block. Money is integer
-- satoshis; a balance changes only in the transaction that accepts (or orphans) a block
-- (gstratum/storage/blocks.py BlockLedger.change and its PPLNS hook).

-- The accepted shares of a PPLNS pool, oldest to newest. submitted_at is the share's own (shares.submitted_at holds
-- the same value), strictly increasing per pool: the writer assigns it under a per-pool lock, so the window
-- "(start, end]" names exactly the shares counted and a reader never sees an older share appear later.
-- address: the login's address as the node normalises it (one address in two letter cases is one miner).
CREATE TABLE IF NOT EXISTS pplns_shares (
    cluster      text        NOT NULL,
    submitted_at timestamptz NOT NULL,
    share_id     uuid        NOT NULL,
    address      text        NOT NULL,
    worker       text        NOT NULL,
    difficulty   numeric     NOT NULL,    -- exact: the decimal the share was judged at
    PRIMARY KEY (cluster, submitted_at)
);

-- What each miner is owed and has not been paid yet.
CREATE TABLE IF NOT EXISTS balances (
    cluster    text        NOT NULL,
    address    text        NOT NULL,
    balance    bigint      NOT NULL,
    updated_at timestamptz NOT NULL,
    PRIMARY KEY (cluster, address)
);

-- The split of every found block's coinbase: one row per miner in its window or paid (its weight in the window, its
-- credit, the balance the split used, what the coinbase paid it) and one for the fee output (fee true). When the
-- block is accepted each miner's balance moves by credit - paid; orphaned, that is reversed.
CREATE TABLE IF NOT EXISTS block_payouts (
    block_hash text    NOT NULL,
    cluster    text    NOT NULL,
    address    text    NOT NULL,
    fee        boolean NOT NULL,
    weight     numeric NOT NULL DEFAULT 0,
    credit     bigint  NOT NULL DEFAULT 0,
    balance    bigint  NOT NULL DEFAULT 0,
    paid       bigint  NOT NULL DEFAULT 0,
    position   integer,                    -- the output's index in the coinbase; NULL when not paid
    PRIMARY KEY (block_hash, address, fee)
);
CREATE INDEX IF NOT EXISTS block_payouts_address_idx ON block_payouts (cluster, address);
ALTER TABLE blocks ADD COLUMN IF NOT EXISTS window_start timestamptz;
ALTER TABLE blocks ADD COLUMN IF NOT EXISTS window_end timestamptz;
ALTER TABLE blocks ADD COLUMN IF NOT EXISTS window_total numeric;
ALTER TABLE blocks ADD COLUMN IF NOT EXISTS window_shares integer;
ALTER TABLE blocks ADD COLUMN IF NOT EXISTS balances_applied boolean NOT NULL DEFAULT false;

-- The split the pool pays right now (its newest job's), for the API and the dashboard: one row per pool.
CREATE TABLE IF NOT EXISTS pplns_current (
    cluster    text        PRIMARY KEY,
    job_id     text        NOT NULL,
    created_at timestamptz NOT NULL,
    split      jsonb       NOT NULL
);

GRANT SELECT, INSERT ON pplns_shares, block_payouts TO gstratum_app;
GRANT SELECT, INSERT, UPDATE ON balances, pplns_current TO gstratum_app;
GRANT UPDATE (balances_applied) ON blocks TO gstratum_app;
