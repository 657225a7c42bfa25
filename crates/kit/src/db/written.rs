//! What [`write_one`](super::write_one) runs and what it gives back.

use sqlx::{Any, Executor};

use super::Conn;

/// The statement [`write_one`](super::write_one) runs: its values owned, so it can run in a task of its own.
pub type OneWrite = sqlx::query::Query<'static, Any, sqlx::any::AnyArguments<'static>>;

/// What a [`write_one`](super::write_one) wrote: the rows it changed, and the rows its `RETURNING` clause gave.
#[derive(Default)]
pub struct Written {
    pub result: sqlx::any::AnyQueryResult,
    pub rows: Vec<sqlx::any::AnyRow>,
}

impl std::fmt::Debug for Written {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Written")
            .field("rows_affected", &self.result.rows_affected())
            .field("rows", &self.rows.len())
            .finish()
    }
}

impl Written {
    pub fn rows_affected(&self) -> u64 {
        self.result.rows_affected()
    }

    /// Runs `query` on `conn`, keeping both what it changed and what it returned.
    pub(super) async fn run(query: OneWrite, conn: &mut Conn) -> Result<Self, sqlx::Error> {
        use futures_util::TryStreamExt;
        let mut written = Self::default();
        let mut results = conn.fetch_many(query);
        while let Some(next) = results.try_next().await? {
            match next {
                sqlx::Either::Left(result) => written.result.extend([result]),
                sqlx::Either::Right(row) => written.rows.push(row),
            }
        }
        Ok(written)
    }
}
