-- Tallies of the jobs by worker and status, kept by triggers inside the statement that
-- changes a job, so that `GET /api/compute/stats` reads a few rows instead of every job
-- retained (`JOB_RETENTION_MS`: 7 days by default, millions of jobs on a busy queue, and
-- the scan held a connection for seconds). SQLite only: its writers take turns at the
-- file's write lock anyway, so a tally row costs them no concurrency; on PostgreSQL it would
-- be one more row lock that every submit waits for, and the stats are read by a scan there
-- (src/queue/mod.rs, `Queue::stats`).
CREATE TABLE job_tally (
    worker TEXT NOT NULL,        -- '' for jobs no worker has claimed
    status TEXT NOT NULL,
    jobs INTEGER NOT NULL,
    run_ms INTEGER NOT NULL,     -- the sum of finished_at - started_at over completed jobs
    last_finished_at INTEGER,    -- the latest finished_at tallied (kept when jobs are purged)
    PRIMARY KEY (worker, status)
) WITHOUT ROWID;

INSERT INTO job_tally (worker, status, jobs, run_ms, last_finished_at)
SELECT COALESCE(worker, ''), status, COUNT(*),
       COALESCE(SUM(CASE WHEN status = 'completed' THEN finished_at - started_at END), 0), MAX(finished_at)
FROM jobs GROUP BY 1, 2;

-- Every change to a tally is an insert into this view: a row of `jobs` counted in (`jobs`
-- 1, its run time) or out (-1, minus its run time), with its finish, if any.
CREATE VIEW job_tally_change (worker, status, jobs, run_ms, finished_at) AS
    SELECT worker, status, jobs, run_ms, last_finished_at FROM job_tally;

CREATE TRIGGER job_tally_apply INSTEAD OF INSERT ON job_tally_change BEGIN
    INSERT INTO job_tally (worker, status, jobs, run_ms, last_finished_at)
    VALUES (NEW.worker, NEW.status, NEW.jobs, NEW.run_ms, NEW.finished_at)
    ON CONFLICT (worker, status) DO UPDATE SET
        jobs = jobs + excluded.jobs,
        run_ms = run_ms + excluded.run_ms,
        last_finished_at = MAX(COALESCE(last_finished_at, excluded.last_finished_at),
                               COALESCE(excluded.last_finished_at, last_finished_at));
END;

CREATE TRIGGER job_tally_insert AFTER INSERT ON jobs BEGIN
    INSERT INTO job_tally_change VALUES (COALESCE(NEW.worker, ''), NEW.status, 1,
        CASE WHEN NEW.status = 'completed' THEN COALESCE(NEW.finished_at - NEW.started_at, 0) ELSE 0 END,
        NEW.finished_at);
END;

-- A lease renewal (`lease_expires_at` alone) fires nothing.
CREATE TRIGGER job_tally_update AFTER UPDATE OF worker, status, started_at, finished_at ON jobs BEGIN
    INSERT INTO job_tally_change VALUES (COALESCE(OLD.worker, ''), OLD.status, -1,
        CASE WHEN OLD.status = 'completed' THEN COALESCE(OLD.started_at - OLD.finished_at, 0) ELSE 0 END,
        NULL);
    INSERT INTO job_tally_change VALUES (COALESCE(NEW.worker, ''), NEW.status, 1,
        CASE WHEN NEW.status = 'completed' THEN COALESCE(NEW.finished_at - NEW.started_at, 0) ELSE 0 END,
        NEW.finished_at);
END;

CREATE TRIGGER job_tally_delete AFTER DELETE ON jobs BEGIN
    INSERT INTO job_tally_change VALUES (COALESCE(OLD.worker, ''), OLD.status, -1,
        CASE WHEN OLD.status = 'completed' THEN COALESCE(OLD.started_at - OLD.finished_at, 0) ELSE 0 END,
        NULL);
END;

-- The last minute's completions by worker are read from this index alone; the tallies
-- replace `jobs_worker`, which every claim and every outcome had to update.
DROP INDEX IF EXISTS jobs_finished;
CREATE INDEX jobs_finished ON jobs (status, finished_at, worker);
DROP INDEX IF EXISTS jobs_worker;
