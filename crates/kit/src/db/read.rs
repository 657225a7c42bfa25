//! Connections for one-statement reads, kept out of the pool ([`Db::read`]), and reads on
//! the caller's thread ([`Db::read_now`]).
//!
//! sqlx's pool pings every connection it takes back; on SQLite a ping is a round trip to the
//! connection's own thread, like the statement itself, so a pooled read cost two. A
//! [`Db`] on a SQLite file keeps up to [`READERS`] connections of its own for reads and takes
//! them back without a ping.
//!
//! Even so, each statement is a round trip to the thread sqlx runs a SQLite connection on:
//! two wake-ups and two context switches, which cost a point read more than SQLite's own
//! work (README, "Where a read's time goes"). So a SQLite file's point reads are run on the
//! caller's thread, on connections of their own (rusqlite, over the same SQLite library),
//! where they can be: a read that would wait (the database busy, so never a sleep on the
//! runtime's thread) or fails in any way is left to the async path, which retries and reports.

use std::ops::{Deref, DerefMut};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sqlx::Any;

use super::{Conn, Db};

/// Connections taken out of the pool for reads ([`Db::read`]), and how many there are; and
/// the connections of the reads on the caller's thread ([`Db::read_now`]).
#[derive(Debug)]
pub(super) struct Readers {
    pub(super) idle: Mutex<Vec<Conn>>,
    pub(super) open: AtomicUsize,
    /// The database file.
    file: PathBuf,
    /// Idle connections for [`Db::read_now`]; one is opened when none is idle.
    pub(super) direct: Mutex<Vec<rusqlite::Connection>>,
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
    pub(super) fn new(file: PathBuf) -> Self {
        Self { idle: Mutex::default(), open: AtomicUsize::new(0), file, direct: Mutex::default() }
    }

    /// A connection of the file for reads on the caller's thread: never waits for a lock
    /// (busy timeout 0) and never writes (`query_only`).
    fn open_direct(&self) -> rusqlite::Result<rusqlite::Connection> {
        use rusqlite::OpenFlags;
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = rusqlite::Connection::open_with_flags(&self.file, flags)?;
        conn.busy_timeout(Duration::ZERO)?;
        conn.pragma_update(None, "query_only", true)?;
        Ok(conn)
    }
    /// Closes the connections kept idle (those in use are dropped when given back).
    pub(super) async fn close(&self) {
        self.direct.lock().unwrap_or_else(|e| e.into_inner()).clear();
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

    /// `read` run now, on the caller's thread, on a connection of a SQLite file kept for such
    /// reads: for one short autocommitted statement (a point read: it holds the thread for its
    /// microseconds). `None` where it cannot be, and then the caller reads through
    /// [`Db::read`]: not a SQLite file, the database not ready or closed, or the read failed in any way,
    /// SQLite's lock busy included (it never waits for it here; the connection is not kept
    /// after a failure).
    pub fn read_now<T, E>(&self, read: impl FnOnce(&rusqlite::Connection) -> Result<T, E>) -> Option<T> {
        let readers = self.readers.as_ref().filter(|_| !self.pool.is_closed())?;
        self.check_ready().ok()?;
        let idle = readers.direct.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let conn = match idle {
            Some(conn) => conn,
            None => readers.open_direct().ok()?,
        };
        let found = read(&conn).ok()?;
        let mut idle = readers.direct.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < READERS && !self.pool.is_closed() {
            idle.push(conn);
        }
        Some(found)
    }
}
