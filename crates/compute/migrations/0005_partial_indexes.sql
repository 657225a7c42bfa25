-- The queue's and the leases' indexes hold only the jobs they are read for (queued ones,
-- running ones), as on PostgreSQL: a job enters and leaves each once, instead of every
-- change of status moving its entry in both (a claim, an outcome and a renewal write fewer
-- pages under the write lock).
DROP INDEX IF EXISTS jobs_queue;
CREATE INDEX jobs_queued ON jobs (status, priority DESC, seq) WHERE status = 'queued';
DROP INDEX IF EXISTS jobs_lease;
CREATE INDEX jobs_lease ON jobs (status, lease_expires_at) WHERE status = 'running';
