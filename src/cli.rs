//! Command line (DESIGN.md §7b): `run`, `demo`, `check`, `explain`, `token`, `audit verify`.
//!
//! `anyhow` lives here and in `main.rs` only; the library below returns typed errors.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tracing_subscriber::fmt::writer::BoxMakeWriter;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use serde::{Deserialize, Serialize};

use crate::config::{self, Snapshot};
use crate::identity::{AuthnError, Principal};
use crate::policy::Outcome;
use crate::proxy::pipeline::refusal_for;
use crate::proxy::{Gateway, server};
use crate::route;
use crate::runtime::{ReloadSource, Runtime};

pub mod cases;
pub(crate) mod demo;
pub mod explain;
mod logwriter;
pub mod review;
pub mod roles;
pub mod routes;

/// Portcullis: an authorization enforcement gateway.
#[derive(Debug, Parser)]
#[command(name = "portcullis", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start the gateway.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Quickstart: gateway + built-in demo upstream on loopback, with ready tokens.
    Demo {
        /// Public listener (default from the embedded demo config: 127.0.0.1:8080).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Use the Redis store: seed the demo tenants into this Redis (under `--prefix`) and
        /// resolve grants from it, e.g. `redis://127.0.0.1:6379/0`.
        #[arg(long)]
        redis: Option<String>,
        /// Key prefix for `--redis` (the demo's keys are overwritten at start).
        #[arg(long, default_value = "portcullis-demo")]
        prefix: String,
    },
    /// Validate a config and print every error with file:line; exit 1 on error.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Decision for one request (or a batch of JSON lines) against the configured grants.
    Explain {
        #[arg(long, short)]
        config: PathBuf,
        /// JSON lines `{"tenant","subject","method","path","claims"}`; `-` reads stdin.
        #[arg(long, conflicts_with_all = ["tenant", "subject", "method", "path"])]
        batch: Option<String>,
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        subject: Option<String>,
        #[arg(long, default_value = "GET")]
        method: String,
        #[arg(long)]
        path: Option<String>,
        /// Extra token claims as JSON, e.g. '{"amr":["mfa"]}'.
        #[arg(long)]
        claims: Option<String>,
        /// `text` (the trace, default on a terminal) or `json` (default otherwise; `--batch`
        /// always answers JSON lines).
        #[arg(long, value_enum)]
        format: Option<Format>,
    },
    /// Run decision tables (`[[cases]]`: tenant, subject, claims, method, path, expect,
    /// reason, status) against the config; exit 1 on any mismatch. Policy under CI.
    Test {
        #[arg(long, short)]
        config: PathBuf,
        /// The cases file (TOML).
        cases: PathBuf,
    },
    /// The compiled route table, lint findings, and coverage against an OpenAPI 3 spec.
    Routes {
        #[arg(long, short)]
        config: PathBuf,
        /// OpenAPI 3 document (YAML or JSON): report operations without a route and routes
        /// without an operation.
        #[arg(long)]
        openapi: Option<PathBuf>,
        /// Print a starting `[[routes]]` map generated from `--openapi` instead.
        #[arg(long, requires = "openapi")]
        emit: bool,
    },
    /// Manage grants in Redis; every change is audited as `role.change`.
    Roles {
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        /// Who makes the change (default: $USER), recorded in the audit event.
        #[arg(long, global = true)]
        actor: Option<String>,
        #[command(subcommand)]
        command: roles::RolesCommand,
    },
    /// Access reviews: snapshot a tenant's grants, or compare two snapshots.
    Review {
        #[command(subcommand)]
        command: ReviewCommand,
    },
    /// Mint an HS256 development token from the configured secret.
    Token {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        sub: String,
        #[arg(long)]
        tenant: String,
        /// Authentication methods, e.g. `--amr mfa`.
        #[arg(long)]
        amr: Vec<String>,
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
    /// Audit log tools.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Verify an audit file's hash chain and sequence (JSON lines, e.g. a file sink's
    /// output); report gaps, reorderings and altered events; exit 1 on any finding.
    Verify {
        file: PathBuf,
        /// Environment variable holding the HMAC key (`[audit] hmac_key_env`).
        #[arg(long, conflicts_with = "hmac_key_file")]
        hmac_key_env: Option<String>,
        /// File holding the HMAC key (`[audit] hmac_key_file`).
        #[arg(long)]
        hmac_key_file: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ReviewCommand {
    /// Every principal of a tenant: roles, effective permissions, overrides, scopes. Audited
    /// as `access.review` (with the document's SHA-256) before the document is printed.
    Export {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        tenant: String,
        #[arg(long, value_enum, default_value = "json")]
        format: ReviewFormat,
        /// Who takes the review (default: $USER), recorded in the audit event.
        #[arg(long)]
        actor: Option<String>,
    },
    /// Who gained or lost which permission between two JSON snapshots.
    Diff { before: PathBuf, after: PathBuf },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReviewFormat {
    Csv,
    Json,
}

/// Output format of the commands that have two.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

impl Format {
    /// Text on a terminal, JSON when piped (scripts keep working unchanged).
    fn or_default(format: Option<Format>) -> Format {
        use std::io::IsTerminal;
        format.unwrap_or(if std::io::stdout().is_terminal() {
            Format::Text
        } else {
            Format::Json
        })
    }
}

/// Install the process's tracing subscriber: `[log]` format and level (`RUST_LOG` wins), on
/// stderr. Access lines use the target `portcullis::access`. Later calls are ignored.
/// `buffered` (the server): lines are written by a background thread (`logwriter.rs`), so
/// the request path makes no write system call; `flush_logs` writes out the rest at exit.
pub fn init_logging(settings: Option<&config::LogSettings>, buffered: bool) {
    let default = config::LogSettings::default();
    let settings = settings.unwrap_or(&default);
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&settings.level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a terminal: not into journald or a log file.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let writer = if buffered && logwriter::BufferedStderr::start() {
        BoxMakeWriter::new(logwriter::BufferedStderr)
    } else {
        BoxMakeWriter::new(std::io::stderr)
    };
    let builder = builder.with_writer(writer);
    let _ = match settings.format {
        config::LogFormat::Json => builder.json().flatten_event(true).try_init(),
        config::LogFormat::Text => builder.try_init(),
    };
}

/// Write out log lines still buffered (see `init_logging`).
pub fn flush_logs() {
    logwriter::BufferedStderr::flush();
}

/// Run a command; the returned code is the process exit code.
pub async fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Run { config } => {
            let snapshot = load_or_print(&config)?;
            init_logging(Some(&snapshot.log), true);
            let source = ReloadSource {
                path: config.clone(),
                secret: None,
            };
            serve_until_signal(snapshot, Some(source)).await?;
            Ok(0)
        }
        Command::Demo {
            listen,
            redis,
            prefix,
        } => demo::run(listen, redis, prefix).await.map(|()| 0),
        Command::Check { config } => match config::load(&config) {
            Ok(snap) => {
                println!(
                    "{}: ok ({} routes, {} upstreams)",
                    config.display(),
                    snap.route_entries.len(),
                    snap.upstreams.len()
                );
                Ok(0)
            }
            Err(errors) => {
                print_errors(&errors);
                Ok(1)
            }
        },
        Command::Explain {
            config,
            batch,
            tenant,
            subject,
            method,
            path,
            claims,
            format,
        } => {
            let gateway = build_for_queries(&config).await?;
            match batch {
                Some(source) => explain_batch(&gateway, &source).await,
                None => {
                    let Some(path) = path else {
                        bail!("explain needs --path (or --batch FILE)");
                    };
                    let claims = match claims {
                        Some(text) => {
                            serde_json::from_str(&text).context("--claims is not a JSON object")?
                        }
                        None => serde_json::Value::Null,
                    };
                    let query = ExplainQuery {
                        tenant,
                        subject,
                        method,
                        path,
                        claims,
                    };
                    let explanation = explain::explain_request(&gateway, &query).await;
                    match Format::or_default(format) {
                        Format::Json => println!("{}", serde_json::to_string(&explanation)?),
                        Format::Text => print!("{}", explain::render_text(&explanation)),
                    }
                    Ok(if explanation.answer.decision == "allow" {
                        0
                    } else {
                        2
                    })
                }
            }
        }
        Command::Test { config, cases } => {
            let file = cases::load(&cases)?;
            let gateway = build_for_queries(&config).await?;
            let report = cases::run(&gateway, &config, &file).await?;
            print!("{}", report.text);
            Ok(i32::from(report.failed > 0 || report.total == 0))
        }
        Command::Routes {
            config,
            openapi,
            emit,
        } => {
            let snap = load_or_print(&config)?;
            let ops = openapi.as_deref().map(routes::load_spec).transpose()?;
            if emit {
                let upstream = snap.upstreams.first().map_or("api", |u| u.name.as_str());
                let ops = ops.unwrap_or_default();
                print!("{}", routes::emit(&ops, snap.policy.separator(), upstream));
                return Ok(0);
            }
            print!("{}", routes::table(&snap));
            let findings = routes::lint(&snap);
            println!("\nlint: {} finding(s)", findings.len());
            for f in &findings {
                println!("  {:<17} {}", f.kind, f.message);
            }
            if let Some(ops) = ops {
                println!();
                print!(
                    "{}",
                    routes::render_coverage(&routes::coverage(&snap, &ops))
                );
            }
            Ok(0)
        }
        Command::Roles {
            config,
            actor,
            command,
        } => {
            let Some(config) = config else {
                bail!("roles needs --config");
            };
            let snap = load_or_print(&config)?;
            roles::run(&snap, &roles::actor(actor), command).await
        }
        Command::Review {
            command:
                ReviewCommand::Export {
                    config,
                    tenant,
                    format,
                    actor,
                },
        } => {
            let snap = load_or_print(&config)?;
            let snapshot = review::export(&snap, &tenant).await?;
            let document = review::document(&snapshot, format)?;
            // Recorded (and delivered to every sink) before anything is printed: no review
            // leaves unaudited.
            review::audit(&snap, &roles::actor(actor), &snapshot, format, &document).await?;
            let mut out = std::io::stdout().lock();
            out.write_all(document.as_bytes())?;
            out.flush()?;
            Ok(0)
        }
        Command::Review {
            command: ReviewCommand::Diff { before, after },
        } => {
            let d = review::diff(&review::load(&before)?, &review::load(&after)?);
            print!("{}", review::render_diff(&d));
            Ok(0)
        }
        Command::Token {
            config,
            sub,
            tenant,
            amr,
            ttl,
        } => {
            let snapshot = load_or_print(&config)?;
            let ttl = humantime::parse_duration(&ttl).context("--ttl: use e.g. `1h`, `30m`")?;
            println!("{}", mint_token(&snapshot, &sub, &tenant, &amr, ttl)?);
            Ok(0)
        }
        Command::Audit {
            command:
                AuditCommand::Verify {
                    file,
                    hmac_key_env,
                    hmac_key_file,
                },
        } => audit_verify(&file, hmac_key_env, hmac_key_file),
    }
}

/// A gateway for synthetic queries (`explain`, `test`): waits briefly for Redis.
async fn build_for_queries(config: &Path) -> anyhow::Result<Gateway> {
    let gateway = Gateway::build_offline(load_or_print(config)?)?;
    if let Some(store) = gateway.store.redis()
        && !store.wait_ready(Duration::from_secs(3)).await
    {
        // Still answers: every decision then reports 503, as the gateway would.
        eprintln!("warning: Redis is not reachable; decisions report 503");
    }
    Ok(gateway)
}

fn audit_verify(
    file: &Path,
    key_env: Option<String>,
    key_file: Option<PathBuf>,
) -> anyhow::Result<i32> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read `{}`", file.display()))?;
    let source = match (key_env, key_file) {
        (Some(name), _) => Some(config::SecretSource::Env(name)),
        (None, Some(path)) => Some(config::SecretSource::File(path)),
        (None, None) => None,
    };
    let key = source
        .map(|s| crate::audit::read_secret(&s, "HMAC key"))
        .transpose()?;
    let report = crate::audit::verify::verify(&text, key.as_deref());
    let mut out = std::io::stdout().lock();
    for finding in &report.findings {
        writeln!(out, "{}: {finding}", file.display())?;
    }
    writeln!(
        out,
        "{}: {} events, {} duplicates, {} problems",
        file.display(),
        report.events,
        report.duplicates,
        report.findings.len()
    )?;
    Ok(if report.ok() { 0 } else { 1 })
}

fn print_errors(errors: &config::ConfigErrors) {
    let mut err = std::io::stderr().lock();
    for e in &errors.errors {
        let _ = writeln!(err, "{}\n", e.rendered);
    }
    let _ = writeln!(err, "{} error(s)", errors.errors.len());
}

fn load_or_print(path: &Path) -> anyhow::Result<Snapshot> {
    config::load(path).map_err(|errors| {
        print_errors(&errors);
        anyhow::anyhow!("invalid configuration `{}`", path.display())
    })
}

/// Serve the public listener (and the admin API on `admin_listen`) until SIGINT/SIGTERM,
/// then drain. With a `source`, SIGHUP and changes to the config files reload it.
pub async fn serve_until_signal(
    snapshot: Snapshot,
    source: Option<ReloadSource>,
) -> anyhow::Result<()> {
    let listen = snapshot.server.listen;
    let admin_listen = snapshot.server.admin_listen;
    let shutdown_timeout = snapshot.limits.shutdown_timeout;
    let gateway = Arc::new(Gateway::build(snapshot)?);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let admin_listener = match admin_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (admin)"))?,
        ),
        None => None,
    };
    let scheme = if gateway.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let reloadable = source.is_some();
    let runtime = Runtime::new(gateway, source);
    let mut tasks = Vec::new();
    if reloadable {
        tasks.push(runtime.spawn_watch(Duration::from_millis(250), Duration::from_secs(1)));
        tasks.push(spawn_sighup(runtime.clone()));
    }
    if let Some(admin) = admin_listener {
        if let Ok(addr) = admin.local_addr() {
            tracing::info!(address = %addr, "Admin API listening.");
        }
        tasks.push(tokio::spawn(crate::admin::serve(
            admin,
            runtime.clone(),
            std::future::pending(),
        )));
    }
    tracing::info!(address = %listen, scheme, "Gateway listening.");
    server::serve_runtime(listener, runtime.clone(), shutdown_signal()).await;
    for task in tasks {
        task.abort();
    }
    // The audit sinks deliver what is in the spool before the process exits (bounded).
    let audit = runtime.current().audit.clone();
    let _ = tokio::task::spawn_blocking(move || audit.shutdown(shutdown_timeout)).await;
    Ok(())
}

/// SIGHUP → reload (the outcome is logged, counted and audited by `Runtime::reload`).
fn spawn_sighup(runtime: Arc<Runtime>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            let Ok(mut hup) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            else {
                tracing::warn!("Cannot listen for SIGHUP; reload with the admin API.");
                return;
            };
            while hup.recv().await.is_some() {
                runtime.reload("sighup").await;
            }
        }
        #[cfg(not(unix))]
        {
            let _ = runtime;
        }
    })
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            () = term => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!("Shutting down: draining in-flight requests.");
}

/// Mint an HS256 token that the configured authenticator accepts (issuer and audience included).
pub fn mint_token(
    snapshot: &Snapshot,
    subject: &str,
    tenant: &str,
    amr: &[String],
    ttl: Duration,
) -> anyhow::Result<String> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let mut claims = serde_json::Map::new();
    claims.insert(snapshot.jwt.subject_claim.clone(), subject.into());
    if let crate::identity::TenantSource::Claim(name) = &snapshot.jwt.tenant {
        claims.insert(name.clone(), tenant.into());
    }
    claims.insert("iat".into(), now.into());
    claims.insert("exp".into(), (now + ttl.as_secs()).into());
    if !amr.is_empty() {
        claims.insert("amr".into(), amr.to_vec().into());
    }
    if let Some(iss) = &snapshot.jwt.issuer {
        claims.insert("iss".into(), iss.clone().into());
    }
    if let Some(aud) = &snapshot.jwt.audience {
        claims.insert("aud".into(), aud.clone().into());
    }
    Ok(snapshot
        .authenticator
        .mint_hs256(&serde_json::Value::Object(claims))?)
}

/// One `explain` input line.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExplainQuery {
    #[serde(default)]
    pub tenant: Option<String>,
    #[serde(default)]
    pub subject: Option<String>,
    pub method: String,
    pub path: String,
    #[serde(default)]
    pub claims: serde_json::Value,
}

/// One `explain` output line: what enforce mode would answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExplainAnswer {
    pub decision: String,
    /// The status enforce mode answers; 200 stands for "forwarded to the upstream".
    pub status: u16,
    pub reason: Option<String>,
    pub required_permission: Option<String>,
    pub route: Option<String>,
    /// `own` when the allow rests on an `own` grant.
    pub scope: Option<String>,
    /// `monitor` when the route would forward a denial anyway.
    pub mode: String,
}

async fn explain_batch(gateway: &Gateway, source: &str) -> anyhow::Result<i32> {
    let reader: Box<dyn BufRead> = if source == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(source).with_context(|| format!("cannot open `{source}`"))?,
        ))
    };
    let mut out = std::io::stdout().lock();
    let mut code = 0;
    for (n, line) in reader.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let answer = match serde_json::from_str::<ExplainQuery>(&line) {
            Ok(query) => serde_json::to_string(&explain_one(gateway, &query).await)?,
            Err(err) => {
                code = 1;
                serde_json::to_string(&serde_json::json!({
                    "error": format!("line {}: {err}", n + 1)
                }))?
            }
        };
        writeln!(out, "{answer}")?;
    }
    Ok(code)
}

/// Decide one synthetic request exactly as the live pipeline would.
pub async fn explain_one(gateway: &Gateway, query: &ExplainQuery) -> ExplainAnswer {
    evaluate_query(gateway, query).await.0
}

/// The principal a query stands for, as the authenticator would have produced it.
fn query_identity(query: &ExplainQuery) -> Result<Principal, AuthnError> {
    match (&query.subject, &query.tenant) {
        (None, _) => Err(AuthnError::MissingToken),
        (Some(_), None) => Err(AuthnError::MissingTenant),
        (Some(subject), Some(tenant)) => Ok(Principal {
            tenant: tenant.clone(),
            subject: subject.clone(),
            mfa: query
                .claims
                .get("amr")
                .and_then(|a| a.as_array())
                .is_some_and(|a| a.iter().any(|v| v == "mfa")),
            expires_at: u64::MAX,
        }),
    }
}

/// Run one query through `Gateway::evaluate`: the answer enforce mode gives, plus the
/// canonical path and evaluation when the request got that far (for traces).
pub(crate) async fn evaluate_query(
    gateway: &Gateway,
    query: &ExplainQuery,
) -> (ExplainAnswer, Option<(String, crate::proxy::Evaluation)>) {
    let mode = gateway.snapshot.mode.as_str().to_owned();
    let deny = |status: u16, reason: &str| ExplainAnswer {
        decision: "deny".into(),
        status,
        reason: Some(reason.into()),
        required_permission: None,
        route: None,
        scope: None,
        mode: mode.clone(),
    };
    let Ok(method) = query.method.parse::<http::Method>() else {
        return (deny(400, "invalid_method"), None);
    };
    let raw_path = query.path.split('?').next().unwrap_or_default();
    let Ok(path) = route::canonicalize(raw_path) else {
        return (deny(400, "ambiguous_path"), None);
    };
    let eval = match gateway
        .evaluate(&method, &path, query_identity(query))
        .await
    {
        Ok(eval) => eval,
        Err(_) => return (deny(503, "authorization_unavailable"), None),
    };
    let answer = answer_for(gateway, &eval);
    (answer, Some((path.into_owned(), eval)))
}

fn answer_for(gateway: &Gateway, eval: &crate::proxy::Evaluation) -> ExplainAnswer {
    let snap = &gateway.snapshot;
    let entry = eval.route.and_then(|id| gateway.route_entry(id));
    let mode = entry.map_or(snap.mode, |e| e.rule.mode).as_str().to_owned();
    let route = entry.map(|e| e.path.clone());
    match &eval.verdict.outcome {
        Outcome::Allow {
            own_only,
            relied_on,
        } => ExplainAnswer {
            decision: "allow".into(),
            status: 200,
            reason: None,
            required_permission: relied_on.map(|id| snap.policy.permission_name(id).to_owned()),
            route,
            scope: own_only.then(|| "own".to_owned()),
            mode,
        },
        Outcome::Deny(denial) => {
            let status = refusal_for(snap, eval).map_or(403, |r| r.status());
            ExplainAnswer {
                decision: "deny".into(),
                status,
                reason: Some(denial.reason.as_str().to_owned()),
                required_permission: denial
                    .permission
                    .map(|id| snap.policy.permission_name(id).to_owned()),
                route,
                scope: None,
                mode,
            }
        }
    }
}
