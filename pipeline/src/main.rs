//! `journey`: the one binary of the pipeline. Every subcommand reads one TOML config
//! (`--config`, default `config/journey.example.toml` when present) with `JOURNEY__...`
//! environment overrides; see `journey <command> --help`.

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use journey_connectors::file_replay::{self, ReplayOptions};
use journey_connectors::generator::{output, Generator};
use journey_connectors::http_ingest::{self, Ingest};
use journey_connectors::publish::BulkPublisher;
use journey_connectors::topics::create_topics;
use journey_pipeline::config::Config;
use journey_pipeline::pii::Pseudonymizer;
use journey_pipeline::runtime::{self, ProcessOptions};
use journey_pipeline::{migrate, sink};
use journey_schemas::registry::RecordKind;
use journey_schemas::{parse_duration, Codec, SchemaSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(name = "journey", version, about = "Customer-journey stream pipeline: Kafka in, sessions and scenarios out to ClickHouse")]
struct Cli {
    /// Config file (TOML). Default: config/journey.example.toml if it exists, else built-in defaults.
    #[arg(long, global = true, env = "JOURNEY_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole path locally: create topics, migrate, generate events, process them, print a summary.
    Demo(DemoArgs),
    /// Publish synthetic customer journeys to Kafka (or to a file for `replay`).
    Generate(GenerateArgs),
    /// Replay recorded logs (JSON lines, or CSV with a mapping) into Kafka.
    Replay(ReplayArgs),
    /// Serve the HTTP ingest endpoint (POST /v1/events).
    Ingest(IngestArgs),
    /// Consume raw events, sessionize, write ClickHouse and output topics.
    Process(ProcessArgs),
    /// Apply ClickHouse migrations from sql/migrations (idempotent).
    Migrate,
    /// Manage the pipeline's Kafka topics.
    Topics {
        #[command(subcommand)]
        action: TopicsAction,
    },
    /// Unwanted-scenario rules: check a rule file, backtest it over history.
    Scenarios {
        #[command(subcommand)]
        action: ScenariosAction,
    },
    /// Print the effective configuration (after environment overrides) and exit.
    Config,
}

#[derive(Subcommand)]
enum ScenariosAction {
    /// Evaluate a rule set over history (ClickHouse `events_current`, or a file with --input)
    /// and report hit counts per rule, before the rules go live.
    Backtest(BacktestArgs),
    /// Validate a rule file and list its rules (every problem is reported at once).
    Check {
        /// Rule file (TOML).
        #[arg(long)]
        rules: PathBuf,
    },
}

#[derive(Args)]
struct BacktestArgs {
    /// Rule file (TOML); default: the configured `detect.rules`, else the built-in set.
    #[arg(long)]
    rules: Option<PathBuf>,
    /// Hits detected at or after this time (RFC 3339 or epoch ms).
    #[arg(long, value_parser = file_replay::parse_bound)]
    from: Option<i64>,
    /// Hits detected before this time (RFC 3339 or epoch ms).
    #[arg(long, value_parser = file_replay::parse_bound)]
    to: Option<i64>,
    /// Read events from this file (JSON lines, optionally .gz) instead of ClickHouse.
    #[arg(long)]
    input: Option<PathBuf>,
    /// Also write every hit as a JSON line to this file.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum TopicsAction {
    /// Create every topic the pipeline uses; existing ones are left alone.
    Create,
}

#[derive(Args, Clone)]
struct GenerateArgs {
    /// Stop after this many valid events (duplicates and malformed records come on top).
    #[arg(long)]
    events: Option<u64>,
    /// Seed; the same seed and settings give identical output.
    #[arg(long)]
    seed: Option<u64>,
    /// Events per second (0 = as fast as possible).
    #[arg(long)]
    rate: Option<u64>,
    /// Number of customers.
    #[arg(long)]
    customers: Option<u64>,
    /// Days of event time.
    #[arg(long)]
    days: Option<u32>,
    /// Start of event time (RFC 3339 or epoch ms); default midnight UTC `days` days ago.
    #[arg(long, value_parser = file_replay::parse_bound)]
    start: Option<i64>,
    /// Share of events emitted late, out of order (0..1).
    #[arg(long)]
    delayed_share: Option<f64>,
    /// Share of events emitted twice with the same event_id (0..1).
    #[arg(long)]
    duplicate_share: Option<f64>,
    /// Share of extra malformed records (0..1).
    #[arg(long)]
    malformed_share: Option<f64>,
    /// Write JSON lines to this file instead of Kafka.
    #[arg(long)]
    output: Option<PathBuf>,
}

#[derive(Args)]
struct DemoArgs {
    /// Events to generate.
    #[arg(long, default_value_t = 200_000)]
    events: u64,
    /// Exit after the summary instead of processing live until Ctrl-C.
    #[arg(long)]
    no_wait: bool,
}

#[derive(Args)]
struct ProcessArgs {
    /// Exit once no record arrived for this long and all sessions are flushed (e.g. 15s).
    #[arg(long, value_parser = parse_duration)]
    exit_when_idle: Option<Duration>,
}

#[derive(Args)]
struct ReplayArgs {
    /// Files to replay: JSON lines (.jsonl/.ndjson) or CSV (.csv, with a mapping), optionally .gz.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Replay speed factor keeping the original spacing (60 = an hour per minute); default as fast as possible.
    #[arg(long)]
    speed: Option<f64>,
    /// Only events at or after this time (RFC 3339 or epoch ms).
    #[arg(long, value_parser = file_replay::parse_bound)]
    from: Option<i64>,
    /// Only events before this time (RFC 3339 or epoch ms).
    #[arg(long, value_parser = file_replay::parse_bound)]
    to: Option<i64>,
    /// CSV mapping from [replay.mappings] (needed for CSV when several are configured).
    #[arg(long)]
    mapping: Option<String>,
}

#[derive(Args)]
struct IngestArgs {
    /// Listen address (default: ingest.listen).
    #[arg(long)]
    listen: Option<String>,
}

fn load_config(path: Option<PathBuf>) -> anyhow::Result<Config> {
    let path = path.or_else(|| {
        let p = PathBuf::from("config/journey.example.toml");
        p.exists().then_some(p)
    });
    Ok(Config::load(path.as_deref(), std::env::vars())?)
}

async fn codec(cfg: &Config) -> anyhow::Result<Codec> {
    Ok(match &cfg.kafka.schema_registry_url {
        Some(url) => Codec::new(
            SchemaSet::from_registry(
                url,
                &[
                    (RecordKind::ChannelEvent, cfg.topics.raw.as_str()),
                    (RecordKind::Session, cfg.topics.sessions.as_str()),
                    (RecordKind::ScenarioHit, cfg.topics.scenarios.as_str()),
                ],
            )
            .await?,
        ),
        None => Codec::from_manifest()?,
    })
}

async fn ensure_topics(cfg: &Config) -> anyhow::Result<()> {
    let created = create_topics(&cfg.kafka, cfg.topics.replication_factor, &cfg.topics.specs()).await?;
    for t in created {
        tracing::info!(topic = %t, "topic created");
    }
    Ok(())
}

async fn generate(cfg: &Config, args: GenerateArgs) -> anyhow::Result<output::Summary> {
    let mut g = cfg.generator.clone();
    g.events = args.events.or(g.events);
    g.seed = args.seed.unwrap_or(g.seed);
    g.rate = args.rate.unwrap_or(g.rate);
    g.customers = args.customers.unwrap_or(g.customers);
    g.days = args.days.unwrap_or(g.days);
    g.start_ms = args.start.or(g.start_ms);
    g.disorder.delayed_share = args.delayed_share.unwrap_or(g.disorder.delayed_share);
    g.disorder.duplicate_share = args.duplicate_share.unwrap_or(g.disorder.duplicate_share);
    g.disorder.malformed_share = args.malformed_share.unwrap_or(g.disorder.malformed_share);
    let mut errors = Vec::new();
    g.validate(&mut errors);
    anyhow::ensure!(errors.is_empty(), "invalid generator settings: {}", errors.join("; "));
    let rate = g.rate;
    let started = Instant::now();
    let summary = match args.output {
        Some(path) => {
            let gen = Generator::new(g, journey_connectors::now_ms());
            tokio::task::spawn_blocking(move || -> anyhow::Result<output::Summary> {
                let file = std::fs::File::create(&path).with_context(|| format!("create {}", path.display()))?;
                let mut w: Box<dyn std::io::Write> = if path.extension().is_some_and(|e| e == "gz") {
                    Box::new(flate2::write::GzEncoder::new(std::io::BufWriter::new(file), flate2::Compression::fast()))
                } else {
                    Box::new(std::io::BufWriter::new(file))
                };
                output::to_writer(gen, rate, &mut w)
            })
            .await??
        }
        None => {
            ensure_topics(cfg).await?;
            let publisher = BulkPublisher::new(&cfg.kafka, codec(cfg).await?, &cfg.topics.raw, &cfg.topics.dlq)?;
            let gen = Generator::new(g, journey_connectors::now_ms());
            tokio::task::spawn_blocking(move || {
                output::to_kafka(gen, rate, publisher, |s| {
                    tracing::info!(events = s.events, acked = s.kafka.delivered, "generating");
                })
            })
            .await??
        }
    };
    let secs = started.elapsed().as_secs_f64();
    tracing::info!(
        events = summary.events,
        duplicates = summary.duplicates,
        malformed = summary.malformed,
        seconds = format!("{secs:.2}"),
        rate = format!("{:.0}/s", summary.total() as f64 / secs.max(1e-9)),
        "generation finished"
    );
    Ok(summary)
}

async fn print_summary(cfg: &Config) -> anyhow::Result<()> {
    #[derive(clickhouse::Row, serde::Deserialize)]
    struct Count {
        n: u64,
    }
    #[derive(clickhouse::Row, serde::Deserialize)]
    struct PathCount {
        path: String,
        n: u64,
    }
    let ch = sink::clickhouse::client(&cfg.clickhouse).with_validation(false);
    // Collapse re-inserted rows now (moved events, new session versions) rather than waiting
    // for background merges, so plain counts are exact too.
    for table in ["events", "sessions", "scenario_hits"] {
        ch.query(&format!("OPTIMIZE TABLE {table} FINAL")).execute().await?;
    }
    let events = ch.query("SELECT count() AS n FROM events").fetch_one::<Count>().await?.n;
    let sessions = ch.query("SELECT count() AS n FROM sessions_current").fetch_one::<Count>().await?.n;
    let paths = ch
        .query("SELECT path, count() AS n FROM sessions_current GROUP BY path ORDER BY n DESC, path LIMIT 8")
        .fetch_all::<PathCount>()
        .await?;
    println!("\n== What landed in ClickHouse ({} / database {}) ==", cfg.clickhouse.url, cfg.clickhouse.database);
    println!("events:            {events}");
    println!("sessions (current): {sessions}");
    println!("top channel paths:");
    for p in paths {
        println!("  {:>8}  {}", p.n, p.path);
    }
    #[derive(clickhouse::Row, serde::Deserialize)]
    struct RuleCount {
        rule: String,
        n: u64,
    }
    let rules = ch
        .query("SELECT rule, count() AS n FROM scenario_hits_current GROUP BY rule ORDER BY n DESC, rule")
        .fetch_all::<RuleCount>()
        .await?;
    println!("unwanted scenarios (current hits):");
    for r in rules {
        println!("  {:>8}  {}", r.n, r.rule);
    }
    println!("\nQuery it yourself, e.g.:");
    println!(
        "  curl -s '{}/?database={}' --data-binary 'SELECT channel, count() FROM events GROUP BY channel ORDER BY 2 DESC'",
        cfg.clickhouse.url, cfg.clickhouse.database
    );
    Ok(())
}

async fn backtest(cfg: &Config, args: BacktestArgs) -> anyhow::Result<()> {
    use journey_pipeline::backtest;
    let rules = match &args.rules {
        Some(p) => journey_pipeline::detect::RuleSet::load(p)?,
        None => cfg.detect.load_rules()?,
    };
    let range = backtest::Range { from: args.from, to: args.to };
    let report = match &args.input {
        Some(path) => {
            let (rules, path, pseudo) = (rules.clone(), path.clone(), Pseudonymizer::from_env()?);
            tokio::task::spawn_blocking(move || backtest::from_file(&rules, &path, range, &pseudo)).await??
        }
        None => backtest::from_clickhouse(&rules, cfg, range).await?,
    };
    if let Some(path) = &args.output {
        use std::io::Write;
        let mut w = std::io::BufWriter::new(std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?);
        for h in &report.hits {
            serde_json::to_writer(&mut w, &*h.hit)?;
            w.write_all(b"\n")?;
        }
        w.flush()?;
    }
    if args.json {
        let per_rule: serde_json::Map<String, serde_json::Value> = report
            .per_rule
            .iter()
            .map(|(k, c)| (k.clone(), serde_json::json!({ "kind": c.kind, "hits": c.hits, "customers": c.customers })))
            .collect();
        let doc = serde_json::json!({
            "events": report.events,
            "customers": report.customers,
            "invalid_lines": report.invalid_lines,
            "rules": per_rule,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print!("{}", backtest::render(&report));
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return ctrl_c.await.unwrap_or(()),
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await.unwrap_or(());
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let cfg = load_config(cli.config)?;
    match cli.command {
        Command::Config => {
            println!("{}", toml::to_string_pretty(&cfg.redacted())?);
        }
        Command::Scenarios { action: ScenariosAction::Check { rules } } => {
            let set = journey_pipeline::detect::RuleSet::load(&rules)?;
            for r in set.rules() {
                println!(
                    "{:<28} {:<9} v{} within {} ({})",
                    r.name,
                    r.kind.name(),
                    r.version,
                    journey_schemas::format_duration(r.within),
                    r.severity.as_str()
                );
            }
        }
        Command::Scenarios { action: ScenariosAction::Backtest(args) } => backtest(&cfg, args).await?,
        Command::Topics { action: TopicsAction::Create } => {
            ensure_topics(&cfg).await?;
            for s in cfg.topics.specs() {
                println!("{} ({} partitions)", s.name, s.partitions);
            }
        }
        Command::Migrate => {
            let report = migrate::migrate(&cfg.clickhouse).await?;
            println!("applied: {:?}; already applied: {:?}", report.applied, report.skipped);
        }
        Command::Generate(args) => {
            let s = generate(&cfg, args).await?;
            println!("generated {} events ({} duplicates, {} malformed)", s.events, s.duplicates, s.malformed);
        }
        Command::Process(args) => {
            runtime::http::spawn_metrics_server(&cfg.process.metrics_addr).await?;
            ensure_topics(&cfg).await?;
            let codec = codec(&cfg).await?;
            let opts = ProcessOptions { exit_when_idle: args.exit_when_idle, upstream_done: None };
            let (stitched, processed) = runtime::run_all(cfg, codec, Pseudonymizer::from_env()?, opts, shutdown_signal()).await?;
            println!("{stitched:?}\n{processed:?}");
        }
        Command::Demo(args) => {
            ensure_topics(&cfg).await?;
            migrate::migrate(&cfg.clickhouse).await?;
            let pseudo = Pseudonymizer::from_env()?;
            let gen = generate(
                &cfg,
                GenerateArgs {
                    events: Some(args.events),
                    seed: None,
                    rate: None,
                    customers: None,
                    days: None,
                    start: None,
                    delayed_share: None,
                    duplicate_share: None,
                    malformed_share: None,
                    output: None,
                },
            )
            .await?;
            println!("published {} events to {}", gen.events, cfg.topics.raw);
            let codec = codec(&cfg).await?;
            let idle = cfg.process.idle_timeout + Duration::from_secs(3);
            let opts = ProcessOptions { exit_when_idle: Some(idle), upstream_done: None };
            let (stitched, summary) = runtime::run_all(cfg.clone(), codec.clone(), pseudo.clone(), opts, shutdown_signal()).await?;
            println!(
                "processed {} records: {} events re-keyed by customer, {} dead-lettered, {} duplicates dropped, \
                 {} identity merges ({} events moved to the merged customer), {} session records and {} scenario-hit records (incl. corrections)",
                stitched.consumed,
                stitched.forwarded,
                stitched.dead_lettered + summary.dead_lettered,
                summary.duplicates,
                stitched.merges,
                summary.forwarded,
                summary.sessions,
                summary.hits
            );
            print_summary(&cfg).await?;
            if !args.no_wait {
                println!("\nProcessing live until Ctrl-C (publish more with `journey generate` or `journey ingest`)...");
                runtime::http::spawn_metrics_server(&cfg.process.metrics_addr).await?;
                runtime::run_all(cfg, codec, pseudo, ProcessOptions::default(), shutdown_signal()).await?;
            }
        }
        Command::Replay(args) => {
            if let Some(s) = args.speed {
                anyhow::ensure!(s > 0.0 && s.is_finite(), "--speed must be a positive number, got {s}");
            }
            ensure_topics(&cfg).await?;
            let publisher = BulkPublisher::new(&cfg.kafka, codec(&cfg).await?, &cfg.topics.raw, &cfg.topics.dlq)?;
            let opts = ReplayOptions { speed: args.speed, from_ms: args.from, to_ms: args.to, mapping: args.mapping, progress: None };
            let replay_cfg = cfg.replay.clone();
            let paths = args.paths;
            let summary = tokio::task::spawn_blocking(move || file_replay::replay(&paths, &replay_cfg, &opts, publisher)).await??;
            println!(
                "read {} rows: published {}, rejected {} {:?}, outside --from/--to {}",
                summary.read,
                summary.published,
                summary.rejected_total(),
                summary.rejected,
                summary.filtered
            );
        }
        Command::Ingest(args) => {
            let mut icfg = cfg.ingest.clone();
            if let Some(l) = args.listen {
                icfg.listen = l;
            }
            anyhow::ensure!(
                !icfg.sources.is_empty(),
                "no ingest sources configured: add [ingest.sources.NAME] with a token (or JOURNEY__INGEST__SOURCES__NAME__TOKEN)"
            );
            ensure_topics(&cfg).await?;
            let publisher = http_ingest::publisher_for(&cfg.kafka, &icfg, codec(&cfg).await?, &cfg.topics.raw, &cfg.topics.dlq)?;
            let handle = runtime::http::metrics_handle();
            let listener = tokio::net::TcpListener::bind(&icfg.listen).await.with_context(|| format!("bind {}", icfg.listen))?;
            let ingest = Ingest::new(icfg, publisher, std::sync::Arc::new(move || handle.render()));
            http_ingest::serve(ingest, listener, shutdown_signal()).await?;
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,rdkafka=warn".into()))
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(Cli::parse()).await {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
