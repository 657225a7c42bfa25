-- The job queue, shared by every compute instance. Times are Unix milliseconds.
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY,              -- submission order (FIFO within a priority)
    id TEXT NOT NULL UNIQUE,              -- the jobId clients see
    operation TEXT NOT NULL,
    operands TEXT NOT NULL,               -- JSON
    priority INTEGER NOT NULL DEFAULT 0,  -- higher runs first
    status TEXT NOT NULL,                 -- queued | running | completed | failed | cancelled
    result TEXT,                          -- JSON, when completed
    error TEXT,                           -- the last error
    attempts INTEGER NOT NULL DEFAULT 0,  -- claims so far
    max_attempts INTEGER NOT NULL,
    worker TEXT,                          -- the worker that claimed it last
    lease_token TEXT,                     -- the current claim; completion must present it
    lease_expires_at BIGINT,
    created_at BIGINT NOT NULL,
    started_at BIGINT,
    finished_at BIGINT
);
CREATE INDEX IF NOT EXISTS jobs_queue ON jobs (status, priority DESC, seq);
CREATE INDEX IF NOT EXISTS jobs_lease ON jobs (status, lease_expires_at);
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (status, finished_at);
CREATE INDEX IF NOT EXISTS jobs_worker ON jobs (worker, status);
