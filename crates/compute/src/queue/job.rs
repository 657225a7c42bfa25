//! A job as stored (`Job`, read from a row of `jobs`), its `Status`, and the API's view of it.

use kit::time::iso_from_millis;
use serde::Serialize;
use serde_json::value::RawValue;
use sqlx::any::AnyRow;
use sqlx::{Any, Row};

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

/// A row of `jobs` as either driver gives it: sqlx's (either dialect), or rusqlite's for a
/// read on the caller's thread ([`kit::db::Db::read_now`]); [`Job::from_row`] reads both.
pub(super) trait Columns {
    fn column<T>(&self, column: &str) -> Result<T, sqlx::Error>
    where
        T: for<'r> sqlx::Decode<'r, Any> + sqlx::Type<Any> + rusqlite::types::FromSql;
}

impl Columns for AnyRow {
    fn column<T>(&self, column: &str) -> Result<T, sqlx::Error>
    where
        T: for<'r> sqlx::Decode<'r, Any> + sqlx::Type<Any> + rusqlite::types::FromSql,
    {
        Row::try_get(self, column)
    }
}

impl Columns for rusqlite::Row<'_> {
    fn column<T>(&self, column: &str) -> Result<T, sqlx::Error>
    where
        T: for<'r> sqlx::Decode<'r, Any> + sqlx::Type<Any> + rusqlite::types::FromSql,
    {
        self.get(column).map_err(|e| sqlx::Error::Decode(Box::new(e)))
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
    pub(super) fn from_row(row: &impl Columns) -> Result<Self, sqlx::Error> {
        let json = |column: &str| -> Result<Option<Box<RawValue>>, sqlx::Error> {
            let text: Option<String> = row.column(column)?;
            text.map(|t| RawValue::from_string(t).map_err(|e| sqlx::Error::Decode(e.into()))).transpose()
        };
        Ok(Self {
            id: row.column("id")?,
            operation: row.column("operation")?,
            operands: json("operands")?.ok_or_else(|| sqlx::Error::Decode("a job without operands".into()))?,
            priority: row.column("priority")?,
            status: Status::parse(&row.column::<String>("status")?)?,
            result: json("result")?,
            error: row.column("error")?,
            attempts: row.column("attempts")?,
            max_attempts: row.column("max_attempts")?,
            worker: row.column("worker")?,
            created_at: row.column("created_at")?,
            started_at: row.column("started_at")?,
            finished_at: row.column("finished_at")?,
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
