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

/// The last `n` lines of one file, read backwards from its end in blocks: each byte is
/// looked at once, and nothing before the lines asked for is read.
fn read_tail(path: &Path, n: usize) -> io::Result<Vec<u8>> {
    const BLOCK: u64 = 64 << 10;
    let mut file = File::open(path)?;
    if n == 0 {
        return Ok(Vec::new());
    }
    let len = file.metadata()?.len();
    // Blocks from the end backwards; the answer starts after the (n+1)-th newline from the
    // end, not counting a final newline (it ends the last line).
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    let mut start = len;
    let mut newlines = 0usize;
    let mut cut: Option<usize> = None;
    while start > 0 && cut.is_none() {
        let from = start.saturating_sub(BLOCK);
        let mut block = vec![0u8; (start - from) as usize];
        file.seek(SeekFrom::Start(from))?;
        file.read_exact(&mut block)?;
        for i in (0..block.len()).rev() {
            if block[i] != b'\n' || (start == len && i + 1 == block.len()) {
                continue;
            }
            newlines += 1;
            if newlines == n {
                cut = Some(i + 1);
                break;
            }
        }
        start = from;
        blocks.push(block);
    }
    let mut out = Vec::with_capacity(blocks.iter().map(Vec::len).sum());
    for (k, block) in blocks.iter().enumerate().rev() {
        let skip = if k + 1 == blocks.len() { cut.unwrap_or(0) } else { 0 };
        out.extend_from_slice(&block[skip..]);
    }
    Ok(out)
}

/// The lines of one trace across the instance logs in `dir` (all of them, or those of
/// `name`: an instance, or a service's `name-N`), each prefixed `instance | `, in time order
/// (by the timestamp each line starts with, or its JSON `timestamp`; a line without one
/// keeps its place after the line before it). At most `limit` lines, the latest.
pub fn trace(dir: &Path, name: Option<&str>, trace_id: &str, limit: usize) -> io::Result<Option<Vec<u8>>> {
    let mut logs: Vec<(String, PathBuf)> = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(name.is_none().then(Vec::new)),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let path = entry?.path();
        let Some(instance) = path.file_name().and_then(|f| f.to_str()).and_then(|f| f.strip_suffix(".log")) else {
            continue;
        };
        if name.is_none_or(|name| belongs(instance, name)) {
            logs.push((instance.to_owned(), path));
        }
    }
    if logs.is_empty() && name.is_some() {
        return Ok(None);
    }
    logs.sort();
    // (timestamp, instance's order, line's order within it, line)
    let mut found: Vec<(Vec<u8>, usize, usize, Vec<u8>)> = Vec::new();
    for (k, (instance, path)) in logs.iter().enumerate() {
        let mut when = Vec::new();
        for file in [rotated(path), path.clone()] {
            let file = match File::open(&file) {
                Ok(file) => file,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let mut reader = std::io::BufReader::with_capacity(64 << 10, file);
            let mut line = Vec::with_capacity(512);
            loop {
                line.clear();
                if std::io::BufRead::read_until(&mut reader, b'\n', &mut line)? == 0 {
                    break;
                }
                if let Some(t) = timestamp(&line) {
                    t.clone_into(&mut when);
                }
                if contains(&line, trace_id.as_bytes()) {
                    let mut out = format!("{instance} | ").into_bytes();
                    out.extend_from_slice(&line);
                    if out.last() != Some(&b'\n') {
                        out.push(b'\n');
                    }
                    found.push((when.clone(), k, found.len(), out));
                }
            }
        }
    }
    found.sort();
    let skip = found.len().saturating_sub(limit);
    Ok(Some(found.into_iter().skip(skip).flat_map(|(.., line)| line).collect()))
}

/// Whether `name` can name a log (an instance's or a service's): lowercase letters, digits
/// and dashes, so it never reaches outside the logs directory.
pub fn is_log_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
}

/// Whether the log of `instance` is one `name` asks for: that instance, or one of the
/// service `name` (`name-N`).
fn belongs(instance: &str, name: &str) -> bool {
    instance == name
        || instance
            .strip_prefix(name)
            .and_then(|rest| rest.strip_prefix('-'))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The time a log line was written: the RFC 3339 timestamp a text line starts with, or the
/// `timestamp` of a JSON line.
fn timestamp(line: &[u8]) -> Option<&[u8]> {
    let from = if line.first().is_some_and(u8::is_ascii_digit) {
        0
    } else {
        const KEY: &[u8] = b"\"timestamp\":\"";
        line.windows(KEY.len()).position(|w| w == KEY)? + KEY.len()
    };
    let rest = &line[from..];
    let end = rest.iter().position(|&b| b == b' ' || b == b'"').unwrap_or(rest.len());
    let stamp = &rest[..end];
    (stamp.len() >= 20 && stamp[4] == b'-' && stamp[10] == b'T').then_some(stamp)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
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

    #[test]
    fn the_tail_of_a_large_file_is_exactly_its_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.log");
        // 30 MB of numbered lines, some of them longer than a block, the last one unended.
        let mut text = Vec::with_capacity(31 << 20);
        let mut i = 0;
        while text.len() < 30 << 20 {
            let pad = if i % 1000 == 7 { 70_000 } else { 20 };
            text.extend_from_slice(format!("line {i:07} {}\n", "x".repeat(pad)).as_bytes());
            i += 1;
        }
        text.extend_from_slice(b"unended");
        fs::write(&path, &text).unwrap();
        let expected: Vec<&[u8]> = text.split(|&b| b == b'\n').collect();
        for n in [1, 2, 200, 2500] {
            let got = read_tail(&path, n).unwrap();
            assert_eq!(got, expected[expected.len() - n..].join(&b'\n'), "{n} lines");
        }
        // More lines than the file has: all of it.
        assert_eq!(read_tail(&path, usize::MAX).unwrap().len(), text.len());
        // A final newline ends the last line; it does not start an empty one.
        fs::write(&path, b"a\nb\nc\n").unwrap();
        assert_eq!(read_tail(&path, 2).unwrap(), b"b\nc\n");
        assert_eq!(read_tail(&path, 3).unwrap(), b"a\nb\nc\n");
        assert_eq!(read_tail(&path, 9).unwrap(), b"a\nb\nc\n");
    }

    #[test]
    fn the_lines_of_one_trace_across_instances_in_time_order() {
        let dir = tempfile::tempdir().unwrap();
        let id = "4bf92f3577b34da6a3ce929d0e0e4736";
        let write = |name: &str, text: &str| fs::write(dir.path().join(name), text).unwrap();
        write(
            "balancer-1.log",
            &format!(
                "2026-01-01T00:00:00.000001Z  INFO request trace_id={id} status=200\n\
                 2026-01-01T00:00:00.000009Z  INFO request trace_id=ffff2f3577b34da6a3ce929d0e0e4736\n"
            ),
        );
        write(
            "data-1.log.1",
            &format!("{{\"timestamp\":\"2026-01-01T00:00:00.000000Z\",\"spans\":[{{\"trace_id\":\"{id}\"}}]}}\n"),
        );
        write(
            "data-1.log",
            &format!(
                "{{\"timestamp\":\"2026-01-01T00:00:00.000002Z\",\"message\":\"request\",\"spans\":[{{\"trace_id\":\"{id}\"}}]}}\n\
                 a continued line about {id}"
            ),
        );
        write("data-12.log", "2026-01-01T00:00:00.000003Z nothing here\n");
        write("database-1.log", &format!("2026-01-01T00:00:00.000004Z {id}\n"));
        write("notes.txt", &format!("{id}\n"));

        let all = String::from_utf8(trace(dir.path(), None, id, 100).unwrap().unwrap()).unwrap();
        let prefixes: Vec<&str> = all.lines().map(|l| l.split(" | ").next().unwrap()).collect();
        assert_eq!(prefixes, ["data-1", "balancer-1", "data-1", "data-1", "database-1"], "{all}");
        assert!(all.lines().nth(3).unwrap().ends_with(&format!("a continued line about {id}")), "{all}");
        assert!(!all.contains("ffff2f"), "{all}");

        let data = String::from_utf8(trace(dir.path(), Some("data"), id, 100).unwrap().unwrap()).unwrap();
        assert_eq!(data.lines().count(), 3, "data-1 only, not database-1: {data}");
        let one = trace(dir.path(), Some("balancer-1"), id, 100).unwrap().unwrap();
        assert_eq!(String::from_utf8(one).unwrap().lines().count(), 1);
        let last = String::from_utf8(trace(dir.path(), None, id, 1).unwrap().unwrap()).unwrap();
        assert!(last.starts_with("database-1 | "), "the latest line: {last}");
        assert_eq!(trace(dir.path(), Some("web"), id, 100).unwrap(), None, "no such service");
        assert_eq!(trace(&dir.path().join("none"), None, id, 100).unwrap(), Some(Vec::new()));
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
