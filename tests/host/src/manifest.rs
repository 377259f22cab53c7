//! The part of Spin's application manifest (v2) that flashclaim uses.
//!
//! Unknown fields are refused rather than ignored: a typo in `spin.toml` should fail here
//! exactly as it fails under `spin up`, not silently change behaviour.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub spin_manifest_version: u32,
    pub application: Application,
    #[serde(default)]
    pub variables: BTreeMap<String, AppVariable>,
    #[serde(default)]
    pub trigger: Triggers,
    #[serde(default)]
    pub component: BTreeMap<String, Component>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Application {
    pub name: String,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub authors: Vec<String>,
    #[serde(default)]
    pub trigger: Option<toml::Table>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppVariable {
    #[serde(default)]
    pub default: Option<String>,
    #[serde(default)]
    pub required: bool,
    #[serde(default)]
    pub secret: bool,
    #[serde(default)]
    pub description: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Triggers {
    #[serde(default)]
    pub http: Vec<HttpTrigger>,
    #[serde(default)]
    pub cron: Vec<CronTrigger>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpTrigger {
    #[serde(default)]
    pub id: Option<String>,
    pub route: String,
    pub component: String,
    #[serde(default)]
    pub executor: Option<toml::Table>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CronTrigger {
    #[serde(default)]
    pub id: Option<String>,
    pub component: String,
    pub cron_expression: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Component {
    pub source: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub allowed_outbound_hosts: Vec<String>,
    #[serde(default)]
    pub variables: BTreeMap<String, String>,
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
    #[serde(default)]
    pub build: Option<toml::Table>,
    #[serde(default)]
    pub key_value_stores: Vec<String>,
}

impl Manifest {
    /// Reads and checks a manifest; every error names the file and the offending field.
    pub fn load(path: &Path) -> Result<(Manifest, PathBuf)> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading manifest {}", path.display()))?;
        let manifest = Self::parse(&text).with_context(|| format!("in {}", path.display()))?;
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Ok((manifest, base))
    }

    pub fn parse(text: &str) -> Result<Manifest> {
        let manifest: Manifest = toml::from_str(text).context("invalid spin.toml")?;
        manifest.validate()?;
        Ok(manifest)
    }

    fn validate(&self) -> Result<()> {
        if self.spin_manifest_version != 2 {
            bail!(
                "spin_manifest_version: only version 2 is supported, found {}",
                self.spin_manifest_version
            );
        }
        for name in self.variables.keys() {
            check_variable_name(name).with_context(|| format!("variables.{name}"))?;
        }
        for (name, var) in &self.variables {
            if var.required && var.default.is_some() {
                bail!(
                    "variables.{name}: a variable cannot be both `required` and have a `default`"
                );
            }
        }
        for (i, t) in self.trigger.http.iter().enumerate() {
            if !self.component.contains_key(&t.component) {
                bail!(
                    "trigger.http[{i}].component: no component named `{}` (route `{}`)",
                    t.component,
                    t.route
                );
            }
            if !t.route.starts_with('/') {
                bail!("trigger.http[{i}].route: `{}` must start with `/`", t.route);
            }
        }
        for (i, t) in self.trigger.cron.iter().enumerate() {
            if !self.component.contains_key(&t.component) {
                bail!(
                    "trigger.cron[{i}].component: no component named `{}`",
                    t.component
                );
            }
            crate::cron::CronSchedule::parse(&t.cron_expression)
                .with_context(|| format!("trigger.cron[{i}].cron_expression"))?;
        }
        for (id, c) in &self.component {
            for (name, template) in &c.variables {
                check_variable_name(name)
                    .with_context(|| format!("component.{id}.variables.{name}"))?;
                for reference in crate::variables::template_references(template)
                    .with_context(|| format!("component.{id}.variables.{name}"))?
                {
                    if !self.variables.contains_key(&reference) {
                        bail!(
                            "component.{id}.variables.{name}: refers to `{{{{ {reference} }}}}`, \
                             which is not declared in [variables]"
                        );
                    }
                }
            }
            for (i, host) in c.allowed_outbound_hosts.iter().enumerate() {
                for reference in crate::variables::template_references(host)
                    .with_context(|| format!("component.{id}.allowed_outbound_hosts[{i}]"))?
                {
                    if !self.variables.contains_key(&reference) {
                        bail!(
                            "component.{id}.allowed_outbound_hosts[{i}]: refers to `{{{{ {reference} }}}}`, \
                             which is not declared in [variables]"
                        );
                    }
                }
            }
        }
        Ok(())
    }
}

/// Spin's rule for variable names: lowercase ASCII letters, digits and underscores,
/// starting with a letter.
pub fn check_variable_name(name: &str) -> Result<()> {
    let mut chars = name.chars();
    let ok = matches!(chars.next(), Some('a'..='z'))
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !ok {
        bail!("`{name}` is not a valid variable name (lowercase letters, digits and `_`, starting with a letter)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
spin_manifest_version = 2
[application]
name = "x"
[variables]
addr = { default = "redis://127.0.0.1" }
[[trigger.http]]
route = "/..."
component = "web"
[component.web]
source = "web.wasm"
allowed_outbound_hosts = ["redis://{{ addr }}"]
[component.web.variables]
addr = "{{ addr }}"
"#;

    #[test]
    fn a_minimal_manifest_parses() {
        let m = Manifest::parse(MINIMAL).unwrap();
        assert_eq!(m.trigger.http[0].component, "web");
    }

    #[test]
    fn a_missing_source_is_named() {
        let text = MINIMAL.replace("source = \"web.wasm\"\n", "");
        let err = format!("{:#}", Manifest::parse(&text).unwrap_err());
        assert!(err.contains("source"), "{err}");
    }

    #[test]
    fn an_unknown_field_is_refused_by_name() {
        let text = MINIMAL.replace("source = \"web.wasm\"", "source = \"web.wasm\"\nsorce = 1");
        let err = format!("{:#}", Manifest::parse(&text).unwrap_err());
        assert!(err.contains("sorce"), "{err}");
    }

    #[test]
    fn a_trigger_naming_an_unknown_component_is_refused() {
        let text = MINIMAL.replace("component = \"web\"", "component = \"nope\"");
        let err = format!("{:#}", Manifest::parse(&text).unwrap_err());
        assert!(err.contains("trigger.http[0].component"), "{err}");
    }

    #[test]
    fn a_template_naming_an_undeclared_variable_is_refused() {
        let text = MINIMAL.replace("addr = \"{{ addr }}\"", "addr = \"{{ nope }}\"");
        let err = format!("{:#}", Manifest::parse(&text).unwrap_err());
        assert!(err.contains("component.web.variables.addr"), "{err}");
    }

    #[test]
    fn a_bad_cron_expression_is_refused_at_load() {
        let text = format!(
            "{MINIMAL}\n[[trigger.cron]]\ncomponent = \"web\"\ncron_expression = \"every second\"\n"
        );
        let err = format!("{:#}", Manifest::parse(&text).unwrap_err());
        assert!(err.contains("trigger.cron[0].cron_expression"), "{err}");
    }

    #[test]
    fn variable_names_follow_spin_rules() {
        assert!(check_variable_name("redis_address").is_ok());
        assert!(check_variable_name("Redis").is_err());
        assert!(check_variable_name("1abc").is_err());
        assert!(check_variable_name("a-b").is_err());
        assert!(check_variable_name("").is_err());
    }
}
