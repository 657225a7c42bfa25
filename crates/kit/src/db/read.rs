//! Connections for one-statement reads, kept out of the pool ([`Db::read`]).
//!
//! sqlx's pool pings every connection it takes back; on SQLite a ping is a round trip to the
//! connection's own thread, like the statement itself, so a pooled read cost two. A
//! [`Db`] on a SQLite file keeps up to [`READERS`] connections of its own for reads and takes
//! them back without a ping.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use sqlx::Any;

use super::{Conn, Db};

/// Connections taken out of the pool for reads ([`Db::read`]), and how many there are.
#[derive(Debug, Default)]
pub(super) struct Readers {
    pub(super) idle: Mutex<Vec<Conn>>,
    pub(super) open: AtomicUsize,
}

/// At most this many connections of a [`Db`] are kept for reads (besides the pool's).
pub const READERS: usize = 4;

/// A connection for one autocommitted read ([`Db::read`]), given back when dropped.
pub struct ReadConn {
    conn: Option<Conn>,
    pooled: Option<sqlx::pool::PoolConnection<Any>>,
    readers: Option<Arc<Readers>>,
}

impl Deref for ReadConn {
    type Target = Conn;

    fn deref(&self) -> &Conn {
        match (&self.conn, &self.pooled) {
            (Some(conn), _) => conn,
            (None, Some(pooled)) => pooled,
            (None, None) => unreachable!("a ReadConn holds a connection until dropped"),
        }
    }
}

impl DerefMut for ReadConn {
    fn deref_mut(&mut self) -> &mut Conn {
        match (&mut self.conn, &mut self.pooled) {
            (Some(conn), _) => conn,
            (None, Some(pooled)) => pooled,
            (None, None) => unreachable!("a ReadConn holds a connection until dropped"),
        }
    }
}

impl Drop for ReadConn {
    fn drop(&mut self) {
        if let (Some(conn), Some(readers)) = (self.conn.take(), &self.readers) {
            readers.idle.lock().unwrap_or_else(|e| e.into_inner()).push(conn);
        }
    }
}

impl Readers {
    /// Closes the connections kept idle (those in use are dropped when given back).
    pub(super) async fn close(&self) {
        let kept: Vec<Conn> = std::mem::take(&mut *self.idle.lock().unwrap_or_else(|e| e.into_inner()));
        for conn in kept {
            let _ = sqlx::Connection::close(conn).await;
        }
    }
}

impl Db {
    /// A connection for one autocommitted read (no transaction may be left open on it),
    /// once the database is ready. On a SQLite file it is one of up to [`READERS`]
    /// connections kept out of the pool and given back without the ping sqlx's pool sends
    /// every connection it takes back: a round trip to the connection's thread that cost as
    /// much as the read (README, "Where a read's time goes"). A read dropped mid-statement
    /// leaves its connection usable: sqlx's SQLite thread finishes or drops the statement
    /// before the next one. Elsewhere, a pooled connection.
    pub async fn read(&self) -> Result<ReadConn, sqlx::Error> {
        self.check_ready()?;
        let pooled = |pooled| ReadConn { conn: None, pooled: Some(pooled), readers: None };
        let Some(readers) = &self.readers else { return Ok(pooled(self.pool.acquire().await?)) };
        let kept = |conn| ReadConn { conn: Some(conn), pooled: None, readers: Some(readers.clone()) };
        if let Some(conn) = readers.idle.lock().unwrap_or_else(|e| e.into_inner()).pop() {
            return Ok(kept(conn));
        }
        if readers.open.fetch_add(1, Ordering::SeqCst) < READERS {
            match self.pool.acquire().await {
                Ok(conn) => return Ok(kept(conn.detach())),
                Err(e) => {
                    readers.open.fetch_sub(1, Ordering::SeqCst);
                    return Err(e);
                }
            }
        }
        readers.open.fetch_sub(1, Ordering::SeqCst);
        Ok(pooled(self.pool.acquire().await?))
    }
}
