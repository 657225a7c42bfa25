//! The writing apart from the building: an [`Export`] rendered as YAML documents (each with
//! its notes as comments), written as one file per kind into a directory (the Secret's file
//! private, 0600) or as one stream; and files read back as objects for `--check`.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::objects::{Object, ReadError};
use super::{Document, Export, Secrets};

/// The file of each kind, numbered so `kubectl apply -f DIR` creates the Namespace first.
pub const FILES: [(&str, &str); 7] = [
    ("Namespace", "00-namespace.yaml"),
    ("ConfigMap", "10-configmap.yaml"),
    ("Secret", "20-secret.yaml"),
    ("Deployment", "30-deployment.yaml"),
    ("HorizontalPodAutoscaler", "35-hpa.yaml"),
    ("Service", "40-service.yaml"),
    ("Ingress", "50-ingress.yaml"),
];

/// Why files could not be written or read back.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Yaml { path: PathBuf, message: String },
    #[error("{path}: document {index}: {source}")]
    Object { path: PathBuf, index: usize, source: ReadError },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> WriteError + '_ {
    move |source| WriteError::Io { path: path.to_owned(), source }
}

/// Documents as one multi-document YAML stream.
pub fn render<'a>(documents: impl IntoIterator<Item = &'a Document>) -> String {
    let mut out = String::new();
    for doc in documents {
        out.push_str("---\n");
        for note in &doc.notes {
            out.push_str("# ");
            out.push_str(note);
            out.push('\n');
        }
        out.push_str(&serde_yaml::to_string(&doc.object).expect("the objects are plain data"));
    }
    out
}

/// Writes one file per kind into `dir` (created if missing) and removes the files of kinds
/// this export no longer has; returns the files written.
pub fn write_dir(dir: &Path, export: &Export) -> Result<Vec<PathBuf>, WriteError> {
    fs::create_dir_all(dir).map_err(io(dir))?;
    let mut written = Vec::new();
    for (kind, file) in FILES {
        let path = dir.join(file);
        let docs: Vec<&Document> = export.documents.iter().filter(|d| d.object.kind() == kind).collect();
        if docs.is_empty() {
            match fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&path)(e)),
                _ => continue,
            }
        }
        let mode = if kind == "Secret" { 0o600 } else { 0o644 };
        write_file(&path, render(docs).as_bytes(), mode)?;
        written.push(path);
    }
    Ok(written)
}

/// Writes `path` whole or not at all (a temporary file renamed), created with `mode`.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), WriteError> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let result = (|| {
        let mut file = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(io(path))
}

/// The secrets of an earlier export into `dir`, so writing again keeps them (tokens signed
/// with the old JWT secret stay valid).
pub fn previous_secrets(dir: &Path) -> Option<Secrets> {
    let (_, file) = FILES.iter().find(|(kind, _)| *kind == "Secret")?;
    let read = read(&dir.join(file)).ok()?;
    read.objects.into_iter().find_map(|o| match o {
        Object::Secret(s) => Some(Secrets {
            jwt_secret: s.string_data.get("JWT_SECRET")?.clone(),
            cluster_token: s.string_data.get("ORCH_CLUSTER_TOKEN")?.clone(),
        }),
        _ => None,
    })
}

/// `path` itself, or every `*.yaml`/`*.yml` file of the directory `path`, in name order.
pub fn files(path: &Path) -> Result<Vec<PathBuf>, WriteError> {
    if !path.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let mut files: Vec<PathBuf> = fs::read_dir(path)
        .map_err(io(path))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    Ok(files)
}

/// What was read: the objects, the files they came from, and the files of a directory
/// skipped because they hold only other kinds (with those kinds).
#[derive(Debug, Default)]
pub struct Read {
    pub objects: Vec<Object>,
    pub files: Vec<PathBuf>,
    pub skipped: Vec<(PathBuf, String)>,
}

/// The objects of [`files`]`(path)`. In a directory, a file whose every document is of a
/// kind the export does not write (a `kustomization.yaml`, the user's own objects) is
/// skipped; any other file that fails to read is an error naming it.
pub fn read(path: &Path) -> Result<Read, WriteError> {
    let in_dir = path.is_dir();
    let mut read = Read::default();
    for file in files(path)? {
        let text = fs::read_to_string(&file).map_err(io(&file))?;
        match parse(&file, &text) {
            Ok(objects) => {
                read.objects.extend(objects);
                read.files.push(file);
            }
            Err(e) => match foreign_kinds(&text).filter(|_| in_dir) {
                Some(kinds) => read.skipped.push((file, kinds)),
                None => return Err(e),
            },
        }
    }
    Ok(read)
}

/// The objects of exactly `files`.
pub fn read_files(files: &[PathBuf]) -> Result<Read, WriteError> {
    let mut read = Read::default();
    for file in files {
        let text = fs::read_to_string(file).map_err(io(file))?;
        read.objects.extend(parse(file, &text)?);
        read.files.push(file.clone());
    }
    Ok(read)
}

/// The kinds of a stream whose every document has a kind, none of them the export's.
fn foreign_kinds(text: &str) -> Option<String> {
    use serde::Deserialize as _;
    let mut kinds = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let value = serde_yaml::Value::deserialize(doc).ok()?;
        if value.is_null() {
            continue;
        }
        let kind = value.get("kind")?.as_str()?.to_owned();
        if FILES.iter().any(|(ours, _)| *ours == kind) {
            return None;
        }
        kinds.push(kind);
    }
    (!kinds.is_empty()).then(|| kinds.join(", "))
}

/// The objects of a multi-document YAML stream; empty documents are skipped.
pub fn parse(path: &Path, text: &str) -> Result<Vec<Object>, WriteError> {
    use serde::Deserialize as _;
    let mut objects = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = serde_yaml::Value::deserialize(doc)
            .map_err(|e| WriteError::Yaml { path: path.to_owned(), message: e.to_string() })?;
        if value.is_null() {
            continue;
        }
        let object = Object::from_value(value).map_err(|source| WriteError::Object {
            path: path.to_owned(),
            index: i + 1,
            source,
        })?;
        objects.push(object);
    }
    Ok(objects)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::objects::{Meta, Namespace};

    #[test]
    fn a_rendered_stream_reads_back_as_the_same_objects() {
        let ns = Object::Namespace(Namespace { metadata: Meta { name: "netsim".into(), ..Meta::default() } });
        let doc = Document { notes: vec!["a note".into()], object: ns.clone() };
        let text = render([&doc, &doc]);
        assert!(text.starts_with("---\n# a note\napiVersion: v1\nkind: Namespace\n"), "{text}");
        assert_eq!(parse(Path::new("x"), &text).unwrap(), vec![ns.clone(), ns]);
    }

    /// `--check DIR` skips a file of other kinds (a kustomization), not one of ours broken.
    #[test]
    fn a_directory_is_read_past_files_of_other_kinds() {
        let dir = tempfile::tempdir().unwrap();
        let ns = "apiVersion: v1\nkind: Namespace\nmetadata: {name: n}\n";
        fs::write(dir.path().join("00-namespace.yaml"), ns).unwrap();
        let kustomization =
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [00-namespace.yaml]\n";
        fs::write(dir.path().join("kustomization.yaml"), kustomization).unwrap();
        let read = read(dir.path()).unwrap();
        assert_eq!((read.objects.len(), read.files.len()), (1, 1));
        assert_eq!(read.skipped, [(dir.path().join("kustomization.yaml"), "Kustomization".to_owned())]);
        // Read as a file, or mixed with our kinds, it is an error naming the file.
        let err = super::read(&dir.path().join("kustomization.yaml")).unwrap_err().to_string();
        assert!(err.contains("kustomization.yaml") && err.contains("Kustomization"), "{err}");
        fs::write(dir.path().join("kustomization.yaml"), format!("{kustomization}---\n{ns}")).unwrap();
        let err = super::read(dir.path()).unwrap_err().to_string();
        assert!(err.contains("kustomization.yaml"), "{err}");
        // Only the files given.
        let only = read_files(&[dir.path().join("00-namespace.yaml")]).unwrap();
        assert_eq!(only.objects.len(), 1);
    }

    #[test]
    fn unknown_kinds_and_versions_are_refused_by_name() {
        let check = |text: &str, expected: &str| {
            let err = parse(Path::new("f.yaml"), text).unwrap_err().to_string();
            assert!(err.contains(expected), "{err}");
        };
        check("apiVersion: v1\nkind: Pod\nmetadata: {name: x}\n", "kind \"Pod\" is not one the export writes");
        check("apiVersion: v1\nkind: Deployment\nmetadata: {name: x}\n", "expected \"apps/v1\"");
        check("- 1\n", "not a mapping with apiVersion and kind");
        check("apiVersion: v1\nkind: Namespace\n", "missing field `metadata`");
        check("a: [\n", "f.yaml");
    }
}
