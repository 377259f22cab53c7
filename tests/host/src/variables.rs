//! Spin's variable model: application variables (default, required, secret) overridden by
//! `SPIN_VARIABLE_<NAME>`, and component variables that are templates over them.
//! A component sees only its own `[component.X.variables]`.

use std::collections::{BTreeMap, HashMap};

use anyhow::{bail, Result};

use crate::manifest::{check_variable_name, AppVariable};

/// The names a template refers to, in order: `"redis://{{ host }}:{{port}}"` → `[host, port]`.
pub fn template_references(template: &str) -> Result<Vec<String>> {
    Ok(parse_template(template)?
        .into_iter()
        .filter_map(|part| match part {
            Part::Variable(name) => Some(name),
            Part::Literal(_) => None,
        })
        .collect())
}

enum Part {
    Literal(String),
    Variable(String),
}

fn parse_template(template: &str) -> Result<Vec<Part>> {
    let mut parts = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        if start > 0 {
            parts.push(Part::Literal(rest[..start].to_string()));
        }
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            bail!("unterminated `{{{{` in template `{template}`");
        };
        let name = after[..end].trim();
        check_variable_name(name)?;
        parts.push(Part::Variable(name.to_string()));
        rest = &after[end + 2..];
    }
    if !rest.is_empty() {
        parts.push(Part::Literal(rest.to_string()));
    }
    Ok(parts)
}

/// The resolved values of the application variables that have one.
#[derive(Debug, Clone, Default)]
pub struct ResolvedVariables {
    values: HashMap<String, String>,
}

impl ResolvedVariables {
    /// Resolves each application variable: the provider (`SPIN_VARIABLE_<NAME>`, looked up
    /// through `env`) wins over the manifest default. A required variable with no value is a
    /// start-up error, as in `spin up`.
    pub fn resolve(
        declared: &BTreeMap<String, AppVariable>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self> {
        let mut values = HashMap::new();
        for (name, var) in declared {
            let key = format!("SPIN_VARIABLE_{}", name.to_ascii_uppercase());
            match env(&key).or_else(|| var.default.clone()) {
                Some(value) => {
                    values.insert(name.clone(), value);
                }
                None if var.required => {
                    bail!("no value for required variable `{name}`: set {key} in the environment")
                }
                None => {}
            }
        }
        Ok(Self { values })
    }

    /// Expands a template. A reference to a variable with no value is an error naming it.
    pub fn render(&self, template: &str) -> Result<String> {
        let mut out = String::new();
        for part in parse_template(template)? {
            match part {
                Part::Literal(text) => out.push_str(&text),
                Part::Variable(name) => match self.values.get(&name) {
                    Some(value) => out.push_str(value),
                    None => bail!("variable `{name}` has no value"),
                },
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn declared() -> BTreeMap<String, AppVariable> {
        let mut d = BTreeMap::new();
        d.insert(
            "host".to_string(),
            AppVariable {
                default: Some("127.0.0.1".into()),
                ..Default::default()
            },
        );
        d.insert(
            "secret".to_string(),
            AppVariable {
                required: true,
                secret: true,
                ..Default::default()
            },
        );
        d
    }

    #[test]
    fn environment_overrides_the_default() {
        let vars = ResolvedVariables::resolve(&declared(), |k| match k {
            "SPIN_VARIABLE_HOST" => Some("10.0.0.1".into()),
            "SPIN_VARIABLE_SECRET" => Some("s".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(
            vars.render("redis://{{ host }}:1").unwrap(),
            "redis://10.0.0.1:1"
        );
    }

    #[test]
    fn a_missing_required_variable_fails_start_up_naming_it() {
        let err = ResolvedVariables::resolve(&declared(), |_| None).unwrap_err();
        assert!(err.to_string().contains("SPIN_VARIABLE_SECRET"), "{err}");
    }

    #[test]
    fn templates_allow_text_around_and_no_spaces() {
        let vars = ResolvedVariables::resolve(&declared(), |k| {
            (k == "SPIN_VARIABLE_SECRET").then(|| "s".to_string())
        })
        .unwrap();
        assert_eq!(
            vars.render("a{{host}}b{{ secret }}c").unwrap(),
            "a127.0.0.1bsc"
        );
        assert!(vars.render("{{ host").is_err());
    }
}
