//! Per-instance log files: the child's stdout and stderr, line by line, with a size cap.
//!
//! Each instance writes `DATA_DIR/logs/<instance>.log` across all its restarts; orch adds a
//! marker line at every start and exit. When the file would grow past the cap it is renamed
//! to `<instance>.log.1` (replacing the previous one) and a new file begins, so an instance
//! never holds more than twice the cap on disk.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};

/// Lines longer than this are cut (the rest follows as another line).
const MAX_LINE: usize = 64 << 10;

pub struct LogFile {
    path: PathBuf,
    max_bytes: u64,
    file: Mutex<Option<(File, u64)>>,
}

impl LogFile {
    pub fn new(path: PathBuf, max_bytes: u64) -> Self {
        Self { path, max_bytes, file: Mutex::new(None) }
    }

    #[cfg(test)]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `bytes` (a whole line), rotating first if the cap would be passed.
    pub fn write(&self, bytes: &[u8]) {
        let mut guard = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = self.write_locked(&mut guard, bytes) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot write the instance log");
            *guard = None;
        }
    }

    fn write_locked(&self, guard: &mut Option<(File, u64)>, bytes: &[u8]) -> io::Result<()> {
        if guard.is_none() {
            if let Some(dir) = self.path.parent() {
                fs::create_dir_all(dir)?;
            }
            let file = OpenOptions::new().create(true).append(true).open(&self.path)?;
            let len = file.metadata()?.len();
            *guard = Some((file, len));
        }
        let (_, len) = guard.as_ref().expect("opened above");
        if *len > 0 && len + bytes.len() as u64 > self.max_bytes {
            fs::rename(&self.path, rotated(&self.path))?;
            let file = OpenOptions::new().create(true).append(true).truncate(false).open(&self.path)?;
            *guard = Some((file, 0));
        }
        let (file, len) = guard.as_mut().expect("opened above");
        file.write_all(bytes)?;
        *len += bytes.len() as u64;
        Ok(())
    }

    /// A line from orch itself: `[orch 2026-01-01T00:00:00.000Z] message`.
    pub fn note(&self, message: &str) {
        self.write(format!("[orch {}] {message}\n", kit::time::now_iso()).as_bytes());
    }
}

fn rotated(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

/// Copies `reader` (a child's stdout or stderr) into `log` line by line until it closes.
pub async fn pump(reader: impl AsyncRead + Unpin, log: std::sync::Arc<LogFile>) {
    let mut reader = BufReader::with_capacity(16 << 10, reader);
    let mut line = Vec::with_capacity(256);
    loop {
        line.clear();
        match (&mut reader).take(MAX_LINE as u64).read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                if line.last() != Some(&b'\n') {
                    line.push(b'\n');
                }
                log.write(&line);
            }
        }
    }
}

/// The last `n` lines of an instance's log (reaching into the rotated file if needed).
pub fn tail(path: &Path, n: usize) -> io::Result<Vec<u8>> {
    let current = read_tail(path, n)?;
    let have = current.iter().filter(|&&b| b == b'\n').count();
    if have >= n {
        return Ok(current);
    }
    let mut older = match read_tail(&rotated(path), n - have) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    older.extend_from_slice(&current);
    Ok(older)
}

/// The last `n` lines of one file, reading backwards in blocks.
fn read_tail(path: &Path, n: usize) -> io::Result<Vec<u8>> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let mut start = len;
    let mut buf: Vec<u8> = Vec::new();
    while start > 0 {
        let step = 64 << 10;
        let from = start.saturating_sub(step);
        let mut block = vec![0u8; (start - from) as usize];
        file.seek(SeekFrom::Start(from))?;
        file.read_exact(&mut block)?;
        block.extend_from_slice(&buf);
        buf = block;
        start = from;
        // n lines need n+1 newlines before them unless we reached the start.
        if buf.iter().filter(|&&b| b == b'\n').count() > n {
            break;
        }
    }
    let newlines: Vec<usize> = buf.iter().enumerate().filter(|(_, b)| **b == b'\n').map(|(i, _)| i).collect();
    // Ignore a final newline: it ends the last line.
    let ends = if buf.last() == Some(&b'\n') { newlines.len() - 1 } else { newlines.len() };
    if n == 0 {
        return Ok(Vec::new());
    }
    if ends >= n {
        let cut = newlines[ends - n] + 1;
        return Ok(buf[cut..].to_vec());
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn rotates_at_the_cap_and_tails_across_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs/web-1.log");
        let log = LogFile::new(path.clone(), 100);
        for i in 0..30 {
            log.write(format!("line {i:02}\n").as_bytes());
        }
        // 8 bytes a line, 12 lines fill a file of 100 bytes.
        assert!(fs::metadata(&path).unwrap().len() <= 100);
        assert!(fs::metadata(rotated(&path)).unwrap().len() <= 100);
        assert_eq!(tail(&path, 2).unwrap(), b"line 28\nline 29\n");
        let fifteen = String::from_utf8(tail(&path, 15).unwrap()).unwrap();
        assert_eq!(fifteen.lines().count(), 15);
        assert!(fifteen.starts_with("line 15\n"), "{fifteen}");
        assert_eq!(tail(&path, 0).unwrap(), b"");
        assert!(tail(&dir.path().join("none.log"), 5).is_err());
    }

    #[tokio::test]
    async fn pumps_lines_and_cuts_endless_ones() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(LogFile::new(dir.path().join("a.log"), 1 << 20));
        let mut input = b"one\ntwo".to_vec();
        input.extend(std::iter::repeat_n(b'x', MAX_LINE + 10));
        pump(&input[..], log.clone()).await;
        let text = fs::read_to_string(log.path()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "one");
        assert_eq!(lines[1].len(), MAX_LINE);
        assert_eq!(lines[2].len(), 3 + 10);
    }
}
