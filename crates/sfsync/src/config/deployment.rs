//! A deployment file: several Salesforce orgs (tenants) served by one `sfsync run` process.
//!
//! ```toml
//! [[orgs]]
//! name = "dhs"                  # the org's label in metrics, routes and logs
//! config = "orgs/dhs.toml"      # a complete sfsync config of that org
//!
//! [[orgs]]
//! name = "courts"
//! config = "orgs/courts.toml"
//!
//! [api]                         # one API for the whole deployment (see `deploy_cmd`)
//! listen = "127.0.0.1:8787"
//! ```
//!
//! Guarantees: each org keeps everything of its own — credentials, objects, budget governor
//! (its own Salesforce client), warehouse namespace (its own SQLite file or Postgres schema; two
//! orgs may never share one), raw-log topic and consumer group — so nothing one org does can
//! touch another's data or budget. Every problem is reported at once, the deployment file's
//! with its line, an org file's with that file's line.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};

use super::secrets::{resolve_api_tokens, ApiToken, AwsFetched};
use super::validate::{ValidApi, ValidWarehouse};
use super::{load, ConfigError, ConfigErrors, LoadedConfig, OrgRef, Parser, SpanIndex};

/// A validated deployment file with every org's config loaded and validated.
#[derive(Debug, Clone)]
pub struct Deployment {
    /// The file name used in messages.
    pub file: String,
    pub orgs: Vec<DeployedOrg>,
    /// The deployment's API (`None`: `[api] enabled = false`).
    pub api: Option<ValidApi>,
    index: SpanIndex,
}

/// One `[[orgs]]` entry with its loaded config.
#[derive(Debug, Clone)]
pub struct DeployedOrg {
    pub name: String,
    pub path: PathBuf,
    pub loaded: LoadedConfig,
}

/// Every problem of a deployment: the deployment file's and each org file's, each list with
/// its file name.
#[derive(Debug, Clone)]
pub struct DeploymentErrors(pub Vec<ConfigErrors>);

impl fmt::Display for DeploymentErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for DeploymentErrors {}

impl DeploymentErrors {
    /// The number of problems in all files.
    pub fn count(&self) -> usize {
        self.0.iter().map(|e| e.errors.len()).sum()
    }
}

/// Whether `text` is a deployment file (it has a top-level `orgs` key). Unparseable text is not
/// (the single-org loader reports its syntax errors).
pub fn is_deployment(text: &str) -> bool {
    DeTable::parse(text)
        .map(|root| root.get_ref().contains_key("orgs"))
        .unwrap_or(false)
}

/// Whether the file at `path` is a deployment file (an unreadable file is not: the single-org
/// loader reports it).
pub fn is_deployment_file(path: &Path) -> bool {
    std::fs::read_to_string(path).is_ok_and(|t| is_deployment(&t))
}

/// An org name: a lowercase letter, then up to 31 lowercase letters, digits, `_` or `-` (it
/// appears in metric labels, URL paths and log lines).
pub fn valid_org_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && name.len() <= 32
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// Reads, parses and validates the deployment file at `path` and every org config it names
/// (no secrets are read).
pub fn load_deployment(path: &Path) -> Result<Deployment, DeploymentErrors> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        DeploymentErrors(vec![ConfigErrors::new(
            &file,
            vec![ConfigError::new(
                "",
                format!("cannot read the deployment file: {e}"),
            )],
        )])
    })?;
    let base = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    load_deployment_str(&text, &file, &base)
}

/// [`load_deployment`] of text; `file` names it in messages and `base` anchors relative paths.
pub fn load_deployment_str(
    text: &str,
    file: &str,
    base: &Path,
) -> Result<Deployment, DeploymentErrors> {
    let root = DeTable::parse(text).map_err(|e| {
        let at = e.span().map(|s| super::span::line_col(text, s.start));
        DeploymentErrors(vec![ConfigErrors::new(
            file,
            vec![ConfigError {
                key: String::new(),
                message: format!("invalid TOML: {}", e.message().trim()),
                at,
            }],
        )])
    })?;
    let index = SpanIndex::build(text, &root);
    let mut p = Parser {
        index: &index,
        errors: Vec::new(),
    };
    let mut refs: Vec<OrgRef> = Vec::new();
    let mut api_table = None;
    for (key, value) in root.get_ref().iter() {
        let name: &str = key.get_ref();
        match name {
            "orgs" => match value.get_ref() {
                DeValue::Array(items) => {
                    for (i, item) in items.iter().enumerate() {
                        if let Some(o) = p.de::<OrgRef>(&format!("orgs[{i}]"), item) {
                            refs.push(o);
                        }
                    }
                }
                _ => p.error(
                    "orgs",
                    value.span(),
                    "expected an array of tables ([[orgs]])",
                ),
            },
            "api" => api_table = p.api(value),
            other => p.error(
                other,
                key.span(),
                &format!(
                    "`{other}` does not belong in a deployment file (one with [[orgs]]): it has \
                     only [[orgs]] and [api]; put `{other}` in each org's own config"
                ),
            ),
        }
    }
    let mut errors = std::mem::take(&mut p.errors);
    let (api, api_errors) = super::validate::api_table(api_table.as_ref(), base);
    errors.extend(api_errors);
    if refs.is_empty() && errors.is_empty() {
        errors.push(ConfigError::new(
            "orgs",
            "names no org: add an [[orgs]] entry",
        ));
    }

    let mut org_errors: Vec<ConfigErrors> = Vec::new();
    let mut orgs: Vec<DeployedOrg> = Vec::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for (i, r) in refs.iter().enumerate() {
        let key = format!("orgs[{i}]");
        if !valid_org_name(&r.name) {
            errors.push(ConfigError::new(
                format!("{key}.name"),
                format!(
                    "\"{}\" is not an org name: a lowercase letter, then up to 31 lowercase \
                     letters, digits, '_' or '-'",
                    r.name
                ),
            ));
        }
        if let Some(j) = seen.insert(r.name.clone(), i) {
            errors.push(ConfigError::new(
                format!("{key}.name"),
                format!("\"{}\" is already the name of orgs[{j}]", r.name),
            ));
        }
        let path = if r.config.is_relative() {
            base.join(&r.config)
        } else {
            r.config.clone()
        };
        match load(&path) {
            Ok(loaded) => {
                if loaded.config.api.as_ref().is_some_and(|a| a.explicit) {
                    errors.push(ConfigError::new(
                        format!("{key}.config"),
                        format!(
                            "{} has its own [api]: in a deployment the deployment file's [api] \
                             serves every org (under /orgs/{}/); remove the org's [api] table",
                            path.display(),
                            r.name
                        ),
                    ));
                }
                orgs.push(DeployedOrg {
                    name: r.name.clone(),
                    path,
                    loaded,
                });
            }
            Err(e) => org_errors.push(e),
        }
    }
    errors.extend(shared_namespaces(&orgs, &refs));

    let mut all = Vec::new();
    if !errors.is_empty() {
        all.push(super::locate_all(file, &index, errors));
    }
    all.extend(org_errors);
    if !all.is_empty() {
        return Err(DeploymentErrors(all));
    }
    Ok(Deployment {
        file: file.to_string(),
        orgs,
        api,
        index,
    })
}

/// Two orgs sharing a warehouse namespace (SQLite file, Postgres schema), a raw-log topic or an
/// apply consumer group: each is reported at the later org.
fn shared_namespaces(orgs: &[DeployedOrg], refs: &[OrgRef]) -> Vec<ConfigError> {
    let index_of = |name: &str| refs.iter().position(|r| r.name == name).unwrap_or(0);
    let mut out = Vec::new();
    let mut warehouses: BTreeMap<String, &str> = BTreeMap::new();
    let mut topics: BTreeMap<(String, String), &str> = BTreeMap::new();
    let mut groups: BTreeMap<(String, String), &str> = BTreeMap::new();
    for o in orgs {
        let key = format!("orgs[{}].config", index_of(&o.name));
        let c = &o.loaded.config;
        let warehouse = match &c.warehouse {
            ValidWarehouse::Sqlite { path } => format!(
                "the SQLite file {}",
                std::fs::canonicalize(path)
                    .unwrap_or_else(|_| path.clone())
                    .display()
            ),
            ValidWarehouse::Postgres { schema, .. } => format!("the Postgres schema {schema}"),
        };
        if let Some(other) = warehouses.insert(warehouse.clone(), &o.name) {
            out.push(ConfigError::new(
                key.clone(),
                format!(
                    "org '{}' uses {warehouse}, as org '{other}' does: each org needs its own \
                     warehouse namespace (its own SQLite file or Postgres schema)",
                    o.name
                ),
            ));
        }
        if let Some(k) = &c.log.kafka {
            let brokers = k.kafka.bootstrap_servers.clone();
            if let Some(other) = topics.insert((brokers.clone(), k.topic.clone()), &o.name) {
                out.push(ConfigError::new(
                    key.clone(),
                    format!(
                        "org '{}' writes its raw log to topic '{}', as org '{other}' does: each \
                         org needs its own log.topic",
                        o.name, k.topic
                    ),
                ));
            }
            if let Some(other) = groups.insert((brokers, k.group.clone()), &o.name) {
                out.push(ConfigError::new(
                    key,
                    format!(
                        "org '{}' applies as consumer group '{}', as org '{other}' does: each \
                         org needs its own log.group",
                        o.name, k.group
                    ),
                ));
            }
        }
    }
    out
}

impl Deployment {
    /// The deployment API's tokens, read from their environment variables and files (AWS
    /// Secrets Manager references are not fetched for the deployment file: keep its tokens in
    /// env or files).
    pub fn resolve_api_tokens(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Vec<ApiToken>, ConfigErrors> {
        let mut errs = Vec::new();
        let tokens = resolve_api_tokens(&mut errs, self.api.as_ref(), env, &AwsFetched::default());
        if errs.is_empty() {
            Ok(tokens)
        } else {
            Err(super::locate_all(&self.file, &self.index, errs))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn org_file(dir: &Path, name: &str, warehouse: &str, extra: &str) -> PathBuf {
        let p = dir.join(format!("{name}.toml"));
        std::fs::write(
            &p,
            format!(
                "[salesforce]\ninstance_url = \"https://{name}.example\"\ncredentials_file = \
                 \"c.json\"\n[warehouse]\n{warehouse}\n{extra}\n[[objects]]\nname = \"Account\"\n"
            ),
        )
        .unwrap();
        p
    }

    fn errors_of(text: &str, dir: &Path) -> String {
        match load_deployment_str(text, "d.toml", dir) {
            Ok(_) => panic!("expected errors"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn two_orgs_load_with_their_own_configs_and_the_shared_api() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        org_file(dir, "a", "type = \"sqlite\"\npath = \"a.db\"", "");
        org_file(
            dir,
            "b",
            "type = \"postgres\"\nurl = { env = \"PG\" }\nschema = \"org_b\"",
            "",
        );
        let text = "[[orgs]]\nname = \"dhs\"\nconfig = \"a.toml\"\n\n[[orgs]]\nname = \
                    \"courts-2\"\nconfig = \"b.toml\"\n\n[api]\nlisten = \"127.0.0.1:9999\"\n";
        assert!(is_deployment(text));
        assert!(!is_deployment("[salesforce]\n"));
        let d = load_deployment_str(text, "d.toml", dir).unwrap();
        let names: Vec<&str> = d.orgs.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(names, ["dhs", "courts-2"]);
        assert_eq!(
            d.orgs[0].loaded.config.salesforce.instance_url.as_deref(),
            Some("https://a.example")
        );
        assert_eq!(d.api.as_ref().unwrap().listen.port(), 9999);
    }

    #[test]
    fn every_problem_is_named_with_its_file_line_and_key() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        org_file(dir, "a", "type = \"sqlite\"\npath = \"same.db\"", "");
        org_file(dir, "b", "type = \"sqlite\"\npath = \"same.db\"", "");
        org_file(
            dir,
            "c",
            "type = \"sqlite\"\npath = \"c.db\"",
            "[api]\nlisten = \"127.0.0.1:1\"",
        );
        std::fs::write(dir.join("broken.toml"), "[salesforce]\nnope = 1\n").unwrap();
        let text = "[[orgs]]\nname = \"a\"\nconfig = \"a.toml\"\n\
                    [[orgs]]\nname = \"b\"\nconfig = \"b.toml\"\n\
                    [[orgs]]\nname = \"a\"\nconfig = \"c.toml\"\n\
                    [[orgs]]\nname = \"Bad Name\"\nconfig = \"broken.toml\"\n\
                    [[orgs]]\nname = \"e\"\nconfig = \"missing.toml\"\n\
                    [salesforce]\ninstance_url = \"x\"\n";
        let e = errors_of(text, dir);
        for want in [
            "d.toml:16:2: salesforce: `salesforce` does not belong in a deployment file",
            "d.toml:6:1: orgs[1].config: org 'b' uses the SQLite file",
            "as org 'a' does: each org needs its own warehouse namespace",
            "d.toml:8:1: orgs[2].name: \"a\" is already the name of orgs[0]",
            "d.toml:9:1: orgs[2].config: ",
            "has its own [api]: in a deployment the deployment file's [api] serves every org",
            "d.toml:11:1: orgs[3].name: \"Bad Name\" is not an org name",
            "broken.toml:2:1: salesforce.nope: unknown field `nope`",
            "missing.toml: cannot read the config file",
        ] {
            assert!(e.contains(want), "missing {want:?} in:\n{e}");
        }
    }

    #[test]
    fn a_deployment_needs_an_org_and_shared_topics_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let e = errors_of("orgs = []\n", dir);
        assert!(e.contains("orgs: names no org"), "{e}");
        let kafka = "[log]\nbackend = \"kafka\"\nbrokers = \"127.0.0.1:9092\"\ntopic = \"raw\"\n";
        org_file(
            dir,
            "a",
            "type = \"postgres\"\nurl = { env = \"PG\" }\nschema = \"a\"",
            kafka,
        );
        org_file(
            dir,
            "b",
            "type = \"postgres\"\nurl = { env = \"PG\" }\nschema = \"b\"",
            kafka,
        );
        let e = errors_of(
            "[[orgs]]\nname = \"a\"\nconfig = \"a.toml\"\n[[orgs]]\nname = \"b\"\nconfig = \"b.toml\"\n",
            dir,
        );
        assert!(
            e.contains("org 'b' writes its raw log to topic 'raw', as org 'a' does"),
            "{e}"
        );
        assert!(e.contains("org 'b' applies as consumer group"), "{e}");
    }
}
