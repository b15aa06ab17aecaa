//! `portcullis store migrate|import|export` (SPEC §10): the PostgreSQL store's tables, and
//! moving everything between a credentials file and the database with the same validation
//! as the loader's (a GitOps round trip: an import of an export is the same set).
use std::path::PathBuf;

use crate::config::{self, raw::MainRaw};
use crate::store::postgres::PgStore;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The main config (portcullis.yaml), whose `store:` names the database.
    #[arg(long, short, global = true)]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(clap::Subcommand, Debug)]
pub enum Cmd {
    /// Create or upgrade the tables (versioned migrations, in a transaction, safe to run
    /// from several replicas at once).
    Migrate,
    /// Replace everything in the database with a credentials file (validated first).
    Import { file: PathBuf },
    /// Print everything in the database as a credentials file.
    Export,
}

/// The database of the config at `path`, and its environment.
fn open(path: &std::path::Path) -> Result<PgStore, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    let raw: MainRaw = config::parse(path, &text).map_err(|e| e.to_string())?;
    let mut sink = config::validate::Sink::new(path);
    let mut files = config::gather::Gather::new();
    let settings = config::validate::settings(&raw, &config::parent_dir(path), &mut sink, &mut files);
    if !sink.errors.is_empty() {
        return Err(config::ConfigErrors(sink.errors).to_string());
    }
    let settings = settings.ok_or_else(|| format!("{}: not a valid config", path.display()))?;
    match settings.store.database_url() {
        Some(url) => PgStore::open(&url?, settings.environment),
        None => Err(format!("{}: its store is the credentials file; `store` commands are for store: {{kind: postgres}}", path.display())),
    }
}

/// Runs a `store` command; the exit status.
pub fn run(args: &Args) -> i32 {
    let Some(path) = &args.config else {
        eprintln!("portcullis store: say which config: --config portcullis.yaml");
        return 2;
    };
    let result = open(path).and_then(|store| match &args.command {
        Cmd::Migrate => store.migrate().map(|applied| {
            if applied.is_empty() {
                println!("the database is up to date");
            } else {
                println!("applied: {}", applied.join(", "));
            }
        }),
        Cmd::Import { file } => {
            let text = std::fs::read_to_string(file).map_err(|e| format!("{}: cannot read: {e}", file.display()))?;
            let raw = config::parse(file, &text).map_err(|e| e.to_string())?;
            store.import(&raw, config::unix_now()).map(|n| println!("imported {n} credential(s) from {}", file.display()))
        }
        Cmd::Export => store.export().map(|yaml| print!("{yaml}")),
    });
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("portcullis store: {e}");
            1
        }
    }
}
