//! `sfsync config check`: loads, validates and (unless told not to) resolves the secrets of a
//! config file, then prints `ok` and a summary, or every error found and a non-zero exit.
//! It never prints a secret value.

use std::path::PathBuf;

use super::{load, LoadedConfig, SyncMode, ValidObject};

#[derive(Debug, clap::Args)]
pub struct ConfigArgs {
    #[command(subcommand)]
    pub command: ConfigCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum ConfigCommand {
    /// Validate a config file: every error with file:line:col and key, or `ok` and a summary.
    Check {
        /// The TOML config file.
        #[arg(long, default_value = "sfsync.toml")]
        config: PathBuf,
        /// Skip reading environment variables and secret files (check the file alone).
        #[arg(long)]
        skip_secrets: bool,
    },
}

/// Runs the subcommand; returns the process exit code.
pub fn run(args: ConfigArgs) -> i32 {
    match args.command {
        ConfigCommand::Check {
            config,
            skip_secrets,
        } => check(&config, skip_secrets),
    }
}

fn check(path: &std::path::Path, skip_secrets: bool) -> i32 {
    if super::deployment::is_deployment_file(path) {
        return check_deployment(path, skip_secrets);
    }
    let loaded = match load(path) {
        Ok(l) => l,
        Err(e) => return report(&e),
    };
    let secrets_line = if skip_secrets {
        "secrets:    not checked (--skip-secrets)".to_string()
    } else {
        // AWS references (Secrets Manager, KMS) are fetched over HTTPS: a small runtime.
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(r) => r,
            Err(e) => {
                eprintln!("sfsync config check: starting the async runtime: {e}");
                return 1;
            }
        };
        match runtime.block_on(loaded.resolve_secrets_from_env()) {
            Ok(r) => match r.aws {
                None => "secrets:    all resolved".to_string(),
                Some(aws) => format!("secrets:    all resolved (AWS {aws})"),
            },
            Err(e) => return report(&e),
        }
    };
    println!("ok");
    print!("{}", summary(&loaded));
    println!("{secrets_line}");
    0
}

/// A deployment file: the file itself, every org's config, and (unless skipped) every org's
/// secrets and the deployment API's tokens.
fn check_deployment(path: &std::path::Path, skip_secrets: bool) -> i32 {
    let d = match super::deployment::load_deployment(path) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("{e}");
            let n = e.count();
            eprintln!(
                "{}: {n} error{}",
                path.display(),
                if n == 1 { "" } else { "s" }
            );
            return 1;
        }
    };
    let mut failed = false;
    let mut secret_lines = Vec::new();
    if skip_secrets {
        secret_lines.push("secrets:    not checked (--skip-secrets)".to_string());
    } else {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(r) => r,
            Err(e) => {
                eprintln!("sfsync config check: starting the async runtime: {e}");
                return 1;
            }
        };
        if let Err(e) = d.resolve_api_tokens(&|n| std::env::var(n).ok()) {
            eprintln!("{e}");
            failed = true;
        }
        for o in &d.orgs {
            match runtime.block_on(o.loaded.resolve_secrets_from_env()) {
                Ok(_) => secret_lines.push(format!("secrets:    org {}: all resolved", o.name)),
                Err(e) => {
                    eprintln!("{e}");
                    failed = true;
                }
            }
        }
    }
    if failed {
        return 1;
    }
    println!("ok");
    println!("deployment: {} org(s)", d.orgs.len());
    match &d.api {
        None => println!("api:        off"),
        Some(a) => println!(
            "api:        {}://{} ({} token{}; each org under /orgs/<name>/)",
            if a.tls.is_some() { "https" } else { "http" },
            a.listen,
            a.tokens.len(),
            if a.tokens.len() == 1 { "" } else { "s" }
        ),
    }
    for o in &d.orgs {
        println!("\n[org {}] {}", o.name, o.path.display());
        print!("{}", summary(&o.loaded));
    }
    for l in secret_lines {
        println!("{l}");
    }
    0
}

fn report(e: &super::ConfigErrors) -> i32 {
    eprintln!("{e}");
    let n = e.errors.len();
    eprintln!("{}: {n} error{}", e.file, if n == 1 { "" } else { "s" });
    1
}

fn object_line(o: &ValidObject) -> String {
    let mut s = format!("  {:<20}", o.name);
    match (&o.mode, &o.channel) {
        (SyncMode::Cdc, Some(c)) => s.push_str(&format!(" cdc  {c}")),
        (SyncMode::OutboundMessage, _) => s.push_str(" outbound messages"),
        _ => s.push_str(" poll"),
    }
    match &o.history {
        Some(super::HistoryFields::All) => s.push_str("  history: all fields"),
        Some(super::HistoryFields::List(f)) => s.push_str(&format!("  history: {}", f.join(", "))),
        None => {}
    }
    match &o.formula_fields {
        sfsync_pipeline::model::FormulaFields::None => {}
        sfsync_pipeline::model::FormulaFields::All => s.push_str("  formulas: all"),
        sfsync_pipeline::model::FormulaFields::Fields(f) => {
            s.push_str(&format!("  formulas: {}", f.join(", ")))
        }
    }
    if !o.pii_fields.is_empty() {
        s.push_str(&format!("  pii: {}", o.pii_fields.join(", ")));
    }
    s
}

/// A short human summary of a loaded config.
pub fn summary(l: &LoadedConfig) -> String {
    let c = &l.config;
    let mut out = String::new();
    let sf = &c.salesforce;
    out.push_str(&format!(
        "salesforce: {} (API v{}, client id {})\n",
        sf.instance_url
            .as_deref()
            .unwrap_or("instance URL from the credentials file"),
        sf.api_version,
        sf.client_id_header
    ));
    out.push_str(&format!("auth:       {}\n", sf.credentials.describe()));
    out.push_str(&format!("warehouse:  {}\n", c.warehouse.describe()));
    if let Some(p) = &c.pii {
        out.push_str(&format!("pii key:    {}", p.key_id));
        // Ids only: which retired keys can still open values until `sfsync keys rotate`.
        match p.old_keys.len() {
            0 => {}
            n => {
                let ids: Vec<&str> = p.old_keys.iter().map(|k| k.key_id.as_str()).collect();
                out.push_str(&format!(
                    " (+{n} old key{} for reading: {})",
                    if n == 1 { "" } else { "s" },
                    ids.join(", ")
                ));
            }
        }
        out.push('\n');
        // Where each key comes from (never the key).
        out.push_str(&format!("  key {}: {}\n", p.key_id, p.key.describe()));
        for k in &p.old_keys {
            out.push_str(&format!("  key {}: {}\n", k.key_id, k.key.describe()));
        }
    }
    match &c.api {
        None => out.push_str("api:        off\n"),
        Some(a) => out.push_str(&format!(
            "api:        {}://{} ({} token{})\n",
            if a.tls.is_some() { "https" } else { "http" },
            a.listen,
            a.tokens.len(),
            if a.tokens.len() == 1 { "" } else { "s" }
        )),
    }
    let a = &c.archive;
    match &a.location {
        None => out.push_str("archive:    off (the hot raw log is never pruned)\n"),
        Some(w) => out.push_str(&format!(
            "archive:    {} every {} s; raw log hot {} d, archive {} d, audit {} d\n",
            w, a.every_secs, a.hot_retention_days, a.retention_days, a.audit_retention_days
        )),
    }
    for s in &c.sinks {
        out.push_str(&format!(
            "sink:       {} ({}) → {}; {} object(s), batch {}, PII {}, dead letters after {} s{}\n",
            s.name,
            s.target.kind(),
            s.target.describe(),
            s.objects.len(),
            s.batch_max,
            s.pii.as_str(),
            s.dead_letter_after_secs,
            s.system
                .as_ref()
                .map(|x| format!(", not back to {x}"))
                .unwrap_or_default()
        ));
    }
    let pe = &c.platform_events;
    if !pe.subscribe.is_empty() || !pe.publish.is_empty() {
        let list = |v: &[String]| {
            if v.is_empty() {
                "-".to_string()
            } else {
                v.join(", ")
            }
        };
        out.push_str(&format!(
            "events:     subscribe {}; publish {} (batch {}, dead letters after {} attempts)\n",
            list(&pe.subscribe),
            list(&pe.publish),
            pe.publish_batch_max,
            pe.publish_max_attempts
        ));
    }
    for m in &c.outbound_messages {
        out.push_str(&format!(
            "outbound:   {} → {} at POST /soap/outbound/{}/<secret from {}>; org {}; {} field(s)\n",
            m.name,
            m.object,
            m.name,
            m.secret.describe(),
            m.organization_id,
            m.fields.len()
        ));
    }
    let f = &c.freshness;
    let own: Vec<String> = c
        .objects
        .iter()
        .filter_map(|o| o.sla_secs.map(|s| format!("{} {s} s", o.name)))
        .collect();
    out.push_str(&format!(
        "freshness:  sync_status every {} s; delayed after {} s{}\n",
        f.update_every_secs,
        f.delayed_after_secs,
        if own.is_empty() {
            String::new()
        } else {
            format!(" ({})", own.join(", "))
        }
    ));
    out.push_str(&format!("objects:    {}\n", c.objects.len()));
    for o in &c.objects {
        out.push_str(&object_line(o));
        out.push('\n');
    }
    out
}
