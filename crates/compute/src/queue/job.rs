//! A job as stored (`Job`, read from a row of `jobs`), its `Status`, and the API's view of it.

use kit::time::iso_from_millis;
use serde::Serialize;
use serde_json::value::RawValue;
use sqlx::Row;
use sqlx::any::AnyRow;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Queued,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl Status {
    pub const ALL: [Status; 5] = [Self::Queued, Self::Running, Self::Completed, Self::Failed, Self::Cancelled];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// Its place in [`Status::ALL`].
    pub fn index(self) -> usize {
        Self::ALL.iter().position(|&s| s == self).unwrap_or(0)
    }

    pub(super) fn parse(s: &str) -> Result<Self, sqlx::Error> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| sqlx::Error::Decode(format!("unknown job status {s:?}").into()))
    }

    /// The status the first row a write returned (`RETURNING status`) gives, if any.
    pub(super) fn returned(written: &kit::db::Written) -> Option<Self> {
        Self::parse(&written.rows.first()?.try_get::<String, _>("status").ok()?).ok()
    }
}

/// A job as stored.
#[derive(Clone, Debug)]
pub struct Job {
    pub id: String,
    pub operation: String,
    /// The JSON text the client sent.
    pub operands: Box<RawValue>,
    pub priority: i64,
    pub status: Status,
    /// The JSON text of the result, as the worker wrote it.
    pub result: Option<Box<RawValue>>,
    pub error: Option<String>,
    pub attempts: i64,
    pub max_attempts: i64,
    pub worker: Option<String>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
}

impl Job {
    pub(super) fn from_row(row: &AnyRow) -> Result<Self, sqlx::Error> {
        let json = |column: &str| -> Result<Option<Box<RawValue>>, sqlx::Error> {
            let text: Option<String> = row.try_get(column)?;
            text.map(|t| RawValue::from_string(t).map_err(|e| sqlx::Error::Decode(e.into()))).transpose()
        };
        Ok(Self {
            id: row.try_get("id")?,
            operation: row.try_get("operation")?,
            operands: json("operands")?.ok_or_else(|| sqlx::Error::Decode("a job without operands".into()))?,
            priority: row.try_get("priority")?,
            status: Status::parse(row.try_get("status")?)?,
            result: json("result")?,
            error: row.try_get("error")?,
            attempts: row.try_get("attempts")?,
            max_attempts: row.try_get("max_attempts")?,
            worker: row.try_get("worker")?,
            created_at: row.try_get("created_at")?,
            started_at: row.try_get("started_at")?,
            finished_at: row.try_get("finished_at")?,
        })
    }

    /// The API's view: `{jobId, operation, operands, priority, status, result?, error?,
    /// attempts, maxAttempts, worker?, createdAt, startedAt?, finishedAt?}`.
    pub fn view(&self) -> JobView<'_> {
        JobView {
            job_id: &self.id,
            operation: &self.operation,
            operands: &self.operands,
            priority: self.priority,
            status: self.status.as_str(),
            result: self.result.as_deref(),
            error: self.error.as_deref(),
            attempts: self.attempts,
            max_attempts: self.max_attempts,
            worker: self.worker.as_deref(),
            created_at: iso_from_millis(self.created_at),
            started_at: self.started_at.map(iso_from_millis),
            finished_at: self.finished_at.map(iso_from_millis),
            message: None,
        }
    }
}

/// A job as the API shows it; operands and result are the stored JSON text.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JobView<'a> {
    pub job_id: &'a str,
    pub operation: &'a str,
    pub operands: &'a RawValue,
    pub priority: i64,
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a str>,
    pub attempts: i64,
    pub max_attempts: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker: Option<&'a str>,
    pub created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// Set by a cancel.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<&'static str>,
}
