-- The task queue shared by several outpaint nodes. Decisions are explained in the docs of
-- `PostgresStore` (crates/queue/src/postgres.rs).

-- Times are Unix milliseconds of the database's clock, so that nodes whose clocks differ agree
-- on leases. now() is the transaction's start: one value for a whole claim.
CREATE FUNCTION outpaint_now_ms() RETURNS bigint
    LANGUAGE sql STABLE
    AS $$ SELECT floor(extract(epoch FROM now()) * 1000)::bigint $$;

CREATE TABLE tasks (
    -- Claim and list order: assigned under the admission lock, so in commit order.
    seq              bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    id               text PRIMARY KEY,
    account          text NOT NULL,
    external_task_id text,
    callback_url     text,
    model            text NOT NULL,
    status           text NOT NULL
                     CHECK (status IN ('submitted', 'processing', 'succeed', 'failed')),
    status_msg       text,
    spec             text NOT NULL,
    result           text,
    attempts         integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    progress         real,
    lease_token      text,
    lease_until      bigint,
    not_before       bigint NOT NULL DEFAULT 0,
    created_at       bigint NOT NULL,
    updated_at       bigint NOT NULL,
    CONSTRAINT tasks_external_id_unique UNIQUE (account, external_task_id)
);
-- Claims walk unfinished tasks oldest first; the queue limit counts them.
CREATE INDEX tasks_unfinished ON tasks (seq) WHERE status IN ('submitted', 'processing');
-- The per-account limit.
CREATE INDEX tasks_account_unfinished ON tasks (account)
    WHERE status IN ('submitted', 'processing');
-- Listing an account's tasks newest first.
CREATE INDEX tasks_account_seq ON tasks (account, seq);
-- Purging finished tasks by age.
CREATE INDEX tasks_finished_updated ON tasks (updated_at) WHERE status IN ('succeed', 'failed');

-- Input images until their task finishes: apart from `tasks`, so that the hot rows stay
-- small. The key is checked at commit, so the bytes go in before the admission lock is taken.
CREATE TABLE task_inputs (
    task_id text PRIMARY KEY
            REFERENCES tasks (id) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED,
    bytes   bytea NOT NULL
);
-- Images are compressed already: store them out of line without trying to compress them.
ALTER TABLE task_inputs ALTER COLUMN bytes SET STORAGE EXTERNAL;

-- The callback outbox. claimed_until: the sender holding it, until then.
CREATE TABLE deliveries (
    seq           bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    id            text PRIMARY KEY,
    task_id       text NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    url           text NOT NULL,
    body          text NOT NULL,
    attempts      integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_at       bigint NOT NULL,
    claimed_until bigint,
    created_at    bigint NOT NULL,
    last_error    text
);
CREATE INDEX deliveries_task ON deliveries (task_id);

-- Live workers; models NULL serves any model.
CREATE TABLE workers (
    id         text PRIMARY KEY,
    models     text[],
    expires_at bigint NOT NULL
);

-- Wake-ups: NOTIFY is sent at commit, to every node listening, whichever statement made the
-- change (an operator's manual requeue too). Identical notifications of one transaction fold
-- into one. A claim of a delivery changes claimed_until only and wakes nobody.
CREATE FUNCTION outpaint_wake_workers() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('outpaint_work', '');
    RETURN NULL;
END $$;
CREATE TRIGGER tasks_wake_workers AFTER INSERT OR UPDATE OF status ON tasks
    FOR EACH ROW WHEN (NEW.status = 'submitted') EXECUTE FUNCTION outpaint_wake_workers();

CREATE FUNCTION outpaint_wake_senders() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('outpaint_deliveries', '');
    RETURN NULL;
END $$;
CREATE TRIGGER deliveries_wake_senders AFTER INSERT OR DELETE OR UPDATE OF next_at ON deliveries
    FOR EACH ROW EXECUTE FUNCTION outpaint_wake_senders();
