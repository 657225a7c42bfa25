//! Why a manifest is rejected: `ManifestError`, its `Problem`s (place, message, fix), the
//! fixes read from serde_yaml's messages, and `closest` (the did-you-mean of every check).

use std::fmt;
use std::path::Path;

use super::Position;

/// Why a manifest was rejected: one or more problems, each with its place and fix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestError {
    /// The file as the user named it.
    pub file: String,
    pub problems: Vec<Problem>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub at: Option<Position>,
    pub message: String,
    pub fix: String,
}

impl ManifestError {
    pub(super) fn whole_file(file: &Path, message: String, fix: &str) -> Self {
        Self { file: file.display().to_string(), problems: vec![Problem { at: None, message, fix: fix.to_owned() }] }
    }

    /// An error about a manifest that was fine as a file but cannot be applied now.
    pub fn new(file: &Path, message: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            file: file.display().to_string(),
            problems: vec![Problem { at: None, message: message.into(), fix: fix.into() }],
        }
    }

    pub(super) fn from_yaml(file: &Path, err: &serde_yaml::Error) -> Self {
        let at = err.location().map(|l| Position { line: l.line(), column: l.column() });
        let mut message = err.to_string();
        if let Some(at) = at {
            message = message.replacen(&format!(" at line {} column {}", at.line, at.column), "", 1);
        }
        let fix = yaml_fix(&message);
        Self { file: file.display().to_string(), problems: vec![Problem { at, message, fix }] }
    }
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            match p.at {
                Some(at) => write!(f, "{}:{}:{}: {}", self.file, at.line, at.column, p.message)?,
                None => write!(f, "{}: {}", self.file, p.message)?,
            }
            if !p.fix.is_empty() {
                write!(f, "; fix: {}", p.fix)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ManifestError {}

/// The fix for a serde_yaml error, from its message.
fn yaml_fix(message: &str) -> String {
    if let Some(rest) = message.split("unknown field `").nth(1) {
        let field = rest.split('`').next().unwrap_or_default();
        let expected: Vec<&str> = rest.split("expected ").nth(1).map(backticked).unwrap_or_default();
        return match closest(field, expected.iter().copied()) {
            Some(best) => format!("did you mean `{best}`? (allowed here: {})", expected.join(", ")),
            None if !expected.is_empty() => format!("remove it (allowed here: {})", expected.join(", ")),
            None => "remove it".to_owned(),
        };
    }
    if let Some(rest) = message.split("unknown variant `").nth(1) {
        let expected: Vec<&str> = rest.split("expected ").nth(1).map(backticked).unwrap_or_default();
        return format!("use one of {}", expected.join(", "));
    }
    if let Some(rest) = message.split("missing field `").nth(1) {
        return format!("add `{}`", rest.split('`').next().unwrap_or_default());
    }
    if let Some(expected) = message.split(", expected ").nth(1) {
        return format!("give {expected}");
    }
    if message.contains("EOF while parsing") {
        return "write a manifest: apiVersion, kind, metadata and spec (see manifests/examples/minimal.yaml)"
            .to_owned();
    }
    "fix the YAML syntax here (indentation, a missing colon or quote)".to_owned()
}

fn backticked(s: &str) -> Vec<&str> {
    s.split('`').skip(1).step_by(2).collect()
}

/// The candidate closest to `word` by edit distance, if it is close enough to be a typo.
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (edit_distance(&word.to_ascii_lowercase(), &c.to_ascii_lowercase()), c))
        .filter(|(d, c)| *d <= (c.len() / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}
