//! `orch export kubernetes`: the verb around [`crate::export`]. It loads the manifest,
//! draws the secrets (or keeps those of an earlier export into the same directory), builds,
//! prints the warnings to stderr, writes, then reads back what it wrote and checks it.
//! `--check FILE|DIR` runs only the checks, on files a user may have edited: the structural
//! ones, then `kubernetes-validate --strict` when it is at hand. A directory's files that
//! hold only other kinds (a kustomization.yaml) are skipped with a note; after `-o DIR` only
//! the files the export wrote are checked. `-o -` keeps no secrets, so it draws new ones
//! only when told (`--new-secrets`).

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::cli::{Failure, Outcome};
use crate::export::{self, Database, Options, Secrets, check, write};
use crate::manifest;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Kubernetes objects for the cluster of FILE: Namespace, ConfigMap, Secret, a Deployment
    /// and a Service per service, an Ingress to the balancer.
    Kubernetes(Kubernetes),
}

#[derive(clap::Args)]
pub struct Kubernetes {
    /// The manifest.
    #[arg(required_unless_present = "check", conflicts_with = "check")]
    file: Option<PathBuf>,
    /// A directory (one file per kind, the Secret's 0600), or `-` for one stream on stdout.
    #[arg(short, long, value_name = "DIR|-", default_value = "-")]
    output: PathBuf,
    /// The namespace (default: the manifest's name).
    #[arg(long, value_name = "NS")]
    namespace: Option<String>,
    /// The image with the `orch` binary (`docker build -t IMAGE .`); also what command
    /// services without their own `image:` run.
    #[arg(long, value_name = "IMAGE")]
    image: Option<String>,
    /// The database auth, data and compute share (written into the Secret).
    #[arg(long, value_name = "URL", conflicts_with = "database_secret")]
    database_url: Option<String>,
    /// A Secret you made whose key DATABASE_URL is that database.
    #[arg(long, value_name = "NAME")]
    database_secret: Option<String>,
    /// Route this host's `/` to the balancer with an Ingress.
    #[arg(long, value_name = "HOST")]
    ingress_host: Option<String>,
    /// The oldest Kubernetes version to run on.
    #[arg(long, value_name = "1.N", default_value = "1.29")]
    kube_version: String,
    /// Write no Secret: make `<cluster>-secrets` yourself (JWT_SECRET, ORCH_CLUSTER_TOKEN,
    /// DATABASE_URL).
    #[arg(long)]
    no_secrets: bool,
    /// Draw new secrets (rotating those of an earlier export into DIR); with `-o -`, where
    /// nothing keeps them, each run draws new ones, so this must be said.
    #[arg(long, conflicts_with = "no_secrets")]
    new_secrets: bool,
    /// Only check FILE or DIR (written by an export, maybe edited since).
    #[arg(long, value_name = "FILE|DIR")]
    check: Option<PathBuf>,
}

pub fn verb(Command::Kubernetes(args): Command) -> Outcome {
    let external =
        check::External { any_secret: args.no_secrets, secrets: args.database_secret.iter().cloned().collect() };
    if let Some(path) = &args.check {
        export::check_kube_version(&args.kube_version).map_err(|e| Failure::Usage(e.to_string()))?;
        let read = write::read(path).map_err(|e| Failure::Usage(e.to_string()))?;
        for (file, kinds) in &read.skipped {
            eprintln!("note: {} skipped: it holds no object the export writes ({kinds})", file.display());
        }
        let count = check_files(&read, &external, &args.kube_version)
            .map_err(|e| Failure::Usage(format!("{}: {e}", path.display())))?;
        eprintln!("{}: {count} objects, no problems", path.display());
        return Ok(ExitCode::SUCCESS);
    }
    let file = args.file.as_deref().expect("clap requires FILE without --check");
    let manifest = manifest::load(file).map_err(|e| Failure::Usage(e.to_string()))?;
    let to_stdout = args.output == Path::new("-");
    if to_stdout && !args.no_secrets && !args.new_secrets {
        return Err(Failure::Usage(
            "-o - would draw new secrets on every run, so applying it twice rotates JWT_SECRET and ORCH_CLUSTER_TOKEN (signing out every user): write to a directory (-o DIR keeps its secrets across exports), give --no-secrets (make the Secret yourself), or --new-secrets to draw new ones anyway".into(),
        ));
    }
    let secrets = match (args.no_secrets, args.new_secrets) {
        (true, _) => None,
        (false, true) => Some(Secrets::random()),
        (false, false) => Some(write::previous_secrets(&args.output).unwrap_or_else(Secrets::random)),
    };
    if to_stdout && secrets.is_some() && std::io::stdout().is_terminal() {
        return Err(Failure::Usage(
            "the export holds secrets and stdout is a terminal: write to a directory (-o DIR), or give --no-secrets"
                .into(),
        ));
    }
    let database = match (args.database_url, args.database_secret) {
        (Some(url), _) => Some(Database::Url(url)),
        (None, Some(name)) => Some(Database::Secret(name)),
        (None, None) => None,
    };
    let options_version = args.kube_version.clone();
    let options = Options {
        namespace: args.namespace,
        image: args.image,
        database,
        ingress_host: args.ingress_host,
        kube_version: Some(args.kube_version.clone()),
        secrets,
    };
    let export = export::kubernetes(&manifest, &options).map_err(|e| Failure::Usage(e.to_string()))?;
    for warning in &export.warnings {
        eprintln!("warning: {warning}");
    }
    let objects: Vec<_> = export.objects().cloned().collect();
    let problems = check::check(&objects, &external);
    if !problems.is_empty() {
        return Err(Failure::Runtime(format!("the export fails its own checks (a bug):\n  {}", problems.join("\n  "))));
    }
    if to_stdout {
        print!("{}", write::render(&export.documents));
        return Ok(ExitCode::SUCCESS);
    }
    let files = write::write_dir(&args.output, &export).map_err(|e| Failure::Runtime(e.to_string()))?;
    // Only the files just written: the directory may hold the user's own (a kustomization).
    let read = write::read_files(&files).map_err(|e| Failure::Runtime(e.to_string()))?;
    let count = check_files(&read, &external, &options_version)
        .map_err(|e| Failure::Runtime(format!("what was written fails the checks (a bug): {e}")))?;
    eprintln!("wrote {count} objects to {}:", args.output.display());
    for file in files {
        eprintln!("  {}", file.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// Checks the objects read, then their files against Kubernetes' schemas when
/// `kubernetes-validate` is at hand; the number of objects, or every problem.
fn check_files(read: &write::Read, external: &check::External, kube_version: &str) -> Result<usize, String> {
    let problems = check::check(&read.objects, external);
    if !problems.is_empty() {
        return Err(format!("{} problems:\n  {}", problems.len(), problems.join("\n  ")));
    }
    schemas(&read.files, kube_version)?;
    Ok(read.objects.len())
}

/// `kubernetes-validate --strict` (`KUBERNETES_VALIDATE`, else on the `PATH`) over `files`.
fn schemas(files: &[PathBuf], kube_version: &str) -> Result<(), String> {
    let validator = std::env::var_os("KUBERNETES_VALIDATE").map(PathBuf::from).or_else(|| {
        let paths = std::env::var_os("PATH")?;
        std::env::split_paths(&paths).map(|dir| dir.join("kubernetes-validate")).find(|p| p.is_file())
    });
    let Some(validator) = validator else {
        eprintln!("note: kubernetes-validate not found, the schemas are not checked (pip install kubernetes-validate)");
        return Ok(());
    };
    if files.is_empty() {
        return Ok(());
    }
    let out = std::process::Command::new(&validator)
        .args(["--strict", "--quiet", "-k", kube_version])
        .args(files)
        .output()
        .map_err(|e| format!("running {}: {e}", validator.display()))?;
    let report = String::from_utf8_lossy(&out.stdout);
    let errors: Vec<&str> = report.lines().filter(|l| l.starts_with("ERROR")).collect();
    if out.status.success() && errors.is_empty() {
        return Ok(());
    }
    let shown = if errors.is_empty() { vec!["kubernetes-validate failed"] } else { errors };
    Err(format!("Kubernetes {kube_version} schemas:\n  {}", shown.join("\n  ")))
}
