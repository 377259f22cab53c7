//! `allowed_outbound_hosts`: which Redis and Postgres addresses a component may open.
//!
//! Entries are `scheme://host[:port]`, where the scheme may be `*`, the host `*` or
//! `*.domain`, and the port `*`, a number or a range `a..b`; an omitted port means the
//! scheme's well-known port. Templates (`{{ var }}`) are expanded before parsing, as Spin does.

use anyhow::{bail, Context, Result};

#[derive(Debug, Clone)]
pub struct AllowedHosts {
    rules: Vec<Rule>,
}

#[derive(Debug, Clone)]
struct Rule {
    scheme: Option<String>,
    host: HostPattern,
    port: PortPattern,
}

#[derive(Debug, Clone)]
enum HostPattern {
    Any,
    Exact(String),
    Suffix(String),
}

#[derive(Debug, Clone)]
enum PortPattern {
    Any,
    Range(u16, u16),
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "redis" | "rediss" => Some(6379),
        "postgres" | "postgresql" => Some(5432),
        "mysql" => Some(3306),
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

impl AllowedHosts {
    pub fn parse(entries: &[String]) -> Result<Self> {
        let rules = entries
            .iter()
            .map(|e| Rule::parse(e).with_context(|| format!("allowed_outbound_hosts entry `{e}`")))
            .collect::<Result<_>>()?;
        Ok(Self { rules })
    }

    pub fn allows(&self, scheme: &str, host: &str, port: u16) -> bool {
        let host = host.to_ascii_lowercase();
        self.rules.iter().any(|r| r.allows(scheme, &host, port))
    }
}

impl Rule {
    fn parse(entry: &str) -> Result<Self> {
        if entry == "insecure:allow-all" {
            return Ok(Rule {
                scheme: None,
                host: HostPattern::Any,
                port: PortPattern::Any,
            });
        }
        let Some((scheme, rest)) = entry.split_once("://") else {
            bail!("expected `scheme://host[:port]`");
        };
        let rest = rest.trim_end_matches('/');
        if rest.contains('/') {
            bail!("a path is not allowed");
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        };
        if host.is_empty() {
            bail!("missing host");
        }
        let host = if host == "*" {
            HostPattern::Any
        } else if let Some(domain) = host.strip_prefix("*.") {
            HostPattern::Suffix(format!(".{}", domain.to_ascii_lowercase()))
        } else if host.contains('*') {
            bail!("`*` is allowed only as the whole host or as `*.domain`");
        } else {
            HostPattern::Exact(host.to_ascii_lowercase())
        };
        let port = match port {
            Some("*") => PortPattern::Any,
            Some(p) => match p.split_once("..") {
                Some((a, b)) => PortPattern::Range(
                    a.parse().context("bad port range start")?,
                    b.parse::<u16>()
                        .context("bad port range end")?
                        .saturating_sub(1),
                ),
                None => {
                    let n = p.parse().with_context(|| format!("bad port `{p}`"))?;
                    PortPattern::Range(n, n)
                }
            },
            None => {
                let Some(n) = default_port(scheme) else {
                    bail!("scheme `{scheme}` has no well-known port: give one, or `*`");
                };
                PortPattern::Range(n, n)
            }
        };
        Ok(Rule {
            scheme: (scheme != "*").then(|| scheme.to_string()),
            host,
            port,
        })
    }

    fn allows(&self, scheme: &str, host: &str, port: u16) -> bool {
        let scheme_ok = self.scheme.as_deref().is_none_or(|s| s == scheme);
        let host_ok = match &self.host {
            HostPattern::Any => true,
            HostPattern::Exact(h) => h == host,
            HostPattern::Suffix(s) => host.ends_with(s.as_str()),
        };
        let port_ok = match self.port {
            PortPattern::Any => true,
            PortPattern::Range(a, b) => (a..=b).contains(&port),
        };
        scheme_ok && host_ok && port_ok
    }
}

/// Host and port of a Redis address (`redis://[user:pass@]host[:port][/db]`).
/// Credentials never leave this function.
pub fn redis_target(address: &str) -> Option<(String, String, u16)> {
    let (scheme, rest) = address.split_once("://")?;
    if scheme != "redis" && scheme != "rediss" {
        return None;
    }
    let authority = rest.split(['/', '?']).next()?;
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = split_host_port(hostport, 6379)?;
    Some((scheme.to_string(), host, port))
}

fn split_host_port(hostport: &str, default: u16) -> Option<(String, u16)> {
    if let Some(rest) = hostport.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None => default,
        };
        return Some((host.to_string(), port));
    }
    match hostport.rsplit_once(':') {
        Some((h, p)) => Some((h.to_string(), p.parse().ok()?)),
        None if !hostport.is_empty() => Some((hostport.to_string(), default)),
        None => None,
    }
}

/// Hosts and ports a Postgres connection string would reach (URL or `key=value` form).
pub fn postgres_targets(address: &str) -> Option<Vec<(String, u16)>> {
    let config: tokio_postgres::Config = address.parse().ok()?;
    let ports = config.get_ports();
    let mut out = Vec::new();
    for (i, host) in config.get_hosts().iter().enumerate() {
        let tokio_postgres::config::Host::Tcp(host) = host else {
            return None;
        };
        let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
        out.push((host.clone(), port));
    }
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(entries: &[&str]) -> AllowedHosts {
        AllowedHosts::parse(&entries.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn an_omitted_port_means_the_schemes_port() {
        let a = allowed(&["redis://127.0.0.1"]);
        assert!(a.allows("redis", "127.0.0.1", 6379));
        assert!(!a.allows("redis", "127.0.0.1", 6380));
        assert!(!a.allows("postgres", "127.0.0.1", 6379));
    }

    #[test]
    fn wildcards_cover_host_port_and_scheme() {
        let a = allowed(&["*://*.example.com:*"]);
        assert!(a.allows("redis", "db.example.com", 1));
        assert!(!a.allows("redis", "example.org", 1));
        let b = allowed(&["postgres://localhost:5000..5002"]);
        assert!(b.allows("postgres", "localhost", 5001));
        assert!(!b.allows("postgres", "localhost", 5002));
    }

    #[test]
    fn redis_targets_ignore_credentials_and_database() {
        assert_eq!(
            redis_target("redis://:pw@10.1.2.3:7000/3"),
            Some(("redis".into(), "10.1.2.3".into(), 7000))
        );
        assert_eq!(
            redis_target("redis://localhost"),
            Some(("redis".into(), "localhost".into(), 6379))
        );
        assert_eq!(redis_target("http://x"), None);
    }

    #[test]
    fn postgres_targets_read_both_address_forms() {
        assert_eq!(
            postgres_targets("postgres://u:p@127.0.0.1:5433/db"),
            Some(vec![("127.0.0.1".into(), 5433)])
        );
        assert_eq!(
            postgres_targets("host=db user=u"),
            Some(vec![("db".into(), 5432)])
        );
    }
}
