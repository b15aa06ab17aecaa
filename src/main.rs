//! The `portcullis` binary: `serve`, `check`, `keygen`, `credentials`, `explain`, and the
//! toolbox: `schema`, `completions`, `man`.
#![forbid(unsafe_code)]
#![deny(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use arc_swap::ArcSwap;
use clap::{Parser, Subcommand};
use pingora::server::configuration::ServerConf;
use pingora::server::Server;

use portcullis::config;
use portcullis::proxy::Portcullis;

#[derive(Parser)]
#[command(name = "portcullis", version, about = "Authentication and authorization sidecar for HTTP APIs")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the sidecar.
    Serve {
        /// The main config file (portcullis.yaml).
        #[arg(long, short)]
        config: PathBuf,
        /// Operational logs: json, text, or auto (text on a terminal, JSON otherwise). Audit
        /// lines are JSON always.
        #[arg(long, value_enum, default_value_t = portcullis::telemetry::LogFormat::Auto)]
        log_format: portcullis::telemetry::LogFormat,
        /// Export one OTLP span per request to this collector (OTLP/HTTP, e.g.
        /// http://127.0.0.1:4318); default: OTEL_EXPORTER_OTLP_ENDPOINT, else off.
        #[arg(long)]
        otlp_endpoint: Option<String>,
    },
    /// Generate a token signing key (PKCS#8 PEM), written with mode 0600.
    Keygen {
        /// Where to write the key.
        #[arg(long)]
        out: PathBuf,
        /// ed25519 (default) or p256.
        #[arg(long, default_value = "ed25519")]
        alg: String,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Validate the config and every file it names; print a summary and warnings.
    Check {
        #[arg(long, short)]
        config: PathBuf,
        /// Treat warnings as errors.
        #[arg(long)]
        strict: bool,
    },
    /// Manage clients and API keys: create, list, show, disable, enable, delete, rotate.
    Credentials(portcullis::cli::credentials::Args),
    /// Explain the decision the config would take for one request by one credential.
    Explain(portcullis::cli::explain::Args),
    /// The PostgreSQL credential store: migrate, import a credentials file, export.
    Store(portcullis::cli::store::Args),
    /// Print the JSON Schema of a config file (for editors: yaml-language-server, VS Code).
    Schema {
        /// main (portcullis.yaml) or credentials (credentials.yaml).
        #[arg(value_enum)]
        file: portcullis::schema::Which,
    },
    /// Print a shell completion script: `source <(portcullis completions bash)`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), or write one page per command into a directory.
    Man {
        /// Write portcullis.1, portcullis-serve.1, … here instead.
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config, strict } => {
            let code = portcullis::cli::check::run(&config, strict, &mut std::io::stdout());
            ExitCode::from(code as u8)
        }
        Command::Serve { config, log_format, otlp_endpoint } => serve(config, log_format, otlp_endpoint),
        Command::Credentials(args) => ExitCode::from(portcullis::cli::credentials::run(&args) as u8),
        Command::Explain(args) => ExitCode::from(portcullis::cli::explain::run(&args) as u8),
        Command::Store(args) => ExitCode::from(portcullis::cli::store::run(&args) as u8),
        Command::Schema { file } => {
            print!("{}", portcullis::schema::render(file));
            ExitCode::SUCCESS
        }
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            portcullis::cli::toolbox::completions(shell, &mut cmd, &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::Man { out_dir } => {
            let cmd = <Cli as clap::CommandFactory>::command();
            match portcullis::cli::toolbox::man(cmd, out_dir.as_deref(), &mut std::io::stdout()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("portcullis man: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Keygen { out, alg, force } => match keygen(&out, &alg, force) {
            Ok(kid) => {
                println!("wrote {} (kid {kid})", out.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("portcullis keygen: {e}");
                ExitCode::from(1)
            }
        },
    }
}

fn keygen(out: &std::path::Path, alg: &str, force: bool) -> Result<String, String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let pem = portcullis::token::keys::generate_pem(alg)?;
    let kid = portcullis::token::keys::load_signing_key(&pem)?.kid;
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).mode(0o600);
    if force {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    let mut f = opts.open(out).map_err(|e| format!("{}: {e}", out.display()))?;
    f.write_all(pem.as_bytes()).map_err(|e| format!("{}: {e}", out.display()))?;
    f.sync_all().map_err(|e| format!("{}: {e}", out.display()))?;
    Ok(kid)
}

fn serve(path: PathBuf, log_format: portcullis::telemetry::LogFormat, otlp_endpoint: Option<String>) -> ExitCode {
    portcullis::telemetry::init_logging_as(log_format);
    if let Err(e) = portcullis::otlp::init(otlp_endpoint.as_deref()) {
        eprintln!("portcullis: cannot start: {e}");
        return ExitCode::from(2);
    }
    config::keep_freed_memory_returnable();
    let snap = match config::load_for_serving(&path, config::unix_now()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("portcullis: cannot start: the config is not valid\n{e}");
            return ExitCode::from(2);
        }
    };
    for w in &snap.warnings {
        tracing::warn!(warning = %w, "config warning");
    }
    let listen = snap.settings.listen.clone();
    let tls_at_start = snap.settings.tls.is_some();
    let grace = snap.settings.shutdown_grace;
    tracing::info!(
        listen = %listen,
        upstream = %snap.settings.upstream_text,
        routes = snap.routes.routes.len(),
        credentials = snap.credentials.all.len(),
        "portcullis starting"
    );
    let metrics = Arc::new(portcullis::metrics::Metrics::new());
    metrics.on_snapshot(&snap, config::unix_now());
    // The parse's freed heap, handed back before serving (issue 15: RSS at 100,000 keys).
    config::release_freed_memory();
    let admin_listen = snap.settings.admin_listen.clone();
    let shared: config::Shared = Arc::new(ArcSwap::from_pointee(snap));
    // SPEC §10: the database, when the credentials live in one.
    let database = match shared.load().settings.store.database_url().transpose() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("portcullis: cannot start: {e}");
            return ExitCode::from(2);
        }
    };
    let pg_store = match &database {
        None => None,
        Some(url) => match portcullis::store::postgres::PgStore::open(url, shared.load().settings.environment) {
            Ok(s) => Some(Arc::new(s)),
            Err(e) => {
                eprintln!("portcullis: cannot start: the PostgreSQL store: {e}");
                return ExitCode::from(2);
            }
        },
    };
    // Last-use times: beside the credentials file, or in the database (SPEC §10).
    let last_used = match &pg_store {
        None => portcullis::last_used::LastUsed::for_config(&path),
        Some(_) => portcullis::last_used::LastUsed::open_none(),
    };
    // SPEC §10: with the PostgreSQL store, this replica follows the database.
    let pg_sync = match (database, shared.load().settings.store.clone()) {
        (Some(url), config::StoreSettings::Postgres { poll, .. }) => {
            // From the rows the start's snapshot was built from: the first connection reads
            // everything again only if the store moved since.
            let (raw, generation) = portcullis::store::postgres::take_first_read().unwrap_or((Default::default(), -1));
            let sync = portcullis::reload::postgres::PgSync::new(url, shared.clone(), poll, raw, generation, Some(metrics.clone()));
            portcullis::store::postgres::register_live(sync.clone());
            Some(sync)
        }
        _ => None,
    };
    let (m, s) = (metrics.clone(), shared.clone());
    let reload = portcullis::reload::reload_service(path, shared.clone(), move |r: &portcullis::reload::ReloadResult| {
        let now = config::unix_now();
        if matches!(r, portcullis::reload::ReloadResult::Applied { .. }) {
            m.on_snapshot(&s.load(), now);
        }
        m.on_reload(r.is_success(), now);
    });

    let conf = ServerConf {
        threads: shared.load().settings.threads,
        work_stealing: shared.load().settings.work_stealing,
        grace_period_seconds: Some(grace),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let in_flight = Arc::new(portcullis::shutdown::InFlight::default());
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = pingora::proxy::http_proxy_service_with_name(
        &server.configuration,
        Portcullis { config: shared.clone(), metrics: metrics.clone(), in_flight: in_flight.clone(), last_used: Some(last_used.clone()) },
        "portcullis proxy",
    );
    // CONNECT reaches our own filters, which refuse it with SPEC §5's JSON 405 and an audit
    // line (pingora's own refusal is a bare 405); no tunnel is ever opened.
    if let Some(app) = proxy.app_logic_mut() {
        let mut opts = app.server_options.take().unwrap_or_default();
        opts.allow_connect_method_proxying = true;
        app.server_options = Some(opts);
    }
    if tls_at_start {
        // The certificate comes from the current snapshot at each handshake, so hot reload
        // renews it; whether the listener speaks TLS at all is fixed at start.
        let mut settings = match pingora::listeners::tls::TlsSettings::intermediate("", "") {
            Ok(s) => s,
            Err(e) => {
                eprintln!("portcullis: cannot set up TLS: {e}");
                return ExitCode::from(2);
            }
        };
        settings.set_cert_resolver(Arc::new(portcullis::tls::SnapshotCertResolver { config: shared.clone() }));
        settings.enable_h2();
        proxy.add_tls_with_settings(&listen, None, settings);
    } else {
        proxy.add_tcp(&listen);
    }
    server.add_service(proxy);
    server.add_service(portcullis::admin::service(metrics, &admin_listen, &listen));
    if let Some(mgmt) = shared.load().settings.management.clone() {
        let credentials_file = shared.load().settings.credentials_file.clone();
        let manager = Arc::new(portcullis::manage::Manager {
            config: shared.clone(),
            sessions: Default::default(),
            queue: match &pg_store {
                Some(db) => portcullis::manage::approval::Queue::in_database(db.clone()),
                None => portcullis::manage::approval::Queue::open(Some(portcullis::manage::approval::queue_path(&credentials_file))),
            },
            last_used: Some(last_used.clone()),
            nudge: Some(reload.nudge()),
            tls: mgmt.tls.is_some(),
            pg: {
                let cell = std::sync::OnceLock::new();
                if let Some(db) = &pg_store {
                    let _ = cell.set(db.clone());
                }
                cell
            },
        });
        match portcullis::manage::service(manager, &mgmt) {
            Ok(s) => {
                server.add_service(s);
            }
            Err(e) => {
                eprintln!("portcullis: cannot start the management listener: {e}");
                return ExitCode::from(2);
            }
        }
        tracing::info!(listen = %mgmt.listen, "management API and console listening");
    }
    if let Some(db) = &pg_store {
        server.add_service(pingora::services::background::background_service(
            "last used (database)",
            portcullis::reload::postgres::LastUsedSync { table: last_used.clone(), store: db.clone() },
        ));
    }
    if let Some(sync) = pg_sync {
        server.add_service(pingora::services::background::background_service(
            "postgres sync",
            portcullis::reload::postgres::PgSyncService(sync),
        ));
    }
    server.add_service(pingora::services::background::background_service("config reload", reload));
    server.add_service(pingora::services::background::background_service("last used", last_used.service()));
    server.run(pingora::server::RunArgs {
        shutdown_signal: Box::new(portcullis::shutdown::DrainingShutdown {
            in_flight,
            grace: std::time::Duration::from_secs(grace),
            before_exit: Some({
                let (l, db) = (last_used.clone(), pg_store.clone());
                Arc::new(move || {
                    portcullis::otlp::shutdown();
                    let _ = l.flush();
                    if let (Some(db), Some(times)) = (&db, l.take_changed()) {
                        let _ = db.save_last_used(times);
                    }
                })
            }),
        }),
    });
    let _ = last_used.flush();
    portcullis::otlp::shutdown();
    portcullis::telemetry::flush_audit(std::time::Duration::from_secs(2));
    ExitCode::SUCCESS
}
