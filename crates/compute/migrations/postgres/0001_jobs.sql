-- The job queue on PostgreSQL (schema `compute`), shared by every compute instance. Times
-- are Unix milliseconds; see src/queue.rs for the lifecycle.
CREATE TABLE jobs (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- submission order (FIFO within a priority)
    id TEXT NOT NULL UNIQUE,
    operation TEXT NOT NULL,
    operands TEXT NOT NULL,
    priority BIGINT NOT NULL DEFAULT 0,
    status TEXT NOT NULL,
    result TEXT,
    error TEXT,
    attempts BIGINT NOT NULL DEFAULT 0,
    max_attempts BIGINT NOT NULL,
    worker TEXT,
    lease_token TEXT,
    lease_expires_at BIGINT,
    created_at BIGINT NOT NULL,
    started_at BIGINT,
    finished_at BIGINT
);
CREATE INDEX jobs_queued ON jobs (priority DESC, seq) WHERE status = 'queued';
CREATE INDEX jobs_lease ON jobs (status, lease_expires_at);
CREATE INDEX jobs_finished ON jobs (status, finished_at);
CREATE INDEX jobs_worker ON jobs (worker, status);

-- Idle workers LISTEN on `compute_jobs` (src/worker.rs): a job becoming claimable (queued,
-- or handed back) notifies them at its commit, whichever instance wrote it.
CREATE FUNCTION jobs_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('compute_jobs', '');
    RETURN NULL;
END $$;
CREATE TRIGGER jobs_queued_notify AFTER INSERT OR UPDATE OF status ON jobs
    FOR EACH ROW WHEN (NEW.status = 'queued') EXECUTE FUNCTION jobs_notify();
