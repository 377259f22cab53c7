//! HTTP routing as Spin does it: literal segments (`/api/x`), named parameters
//! (`/api/activities/:id/claims`) and a trailing wildcard (`/api/...`). The most specific
//! route wins, segment by segment: a literal beats a parameter, which beats the wildcard.

use anyhow::{bail, Result};

use crate::manifest::HttpTrigger;

#[derive(Debug, Clone)]
pub struct Router {
    routes: Vec<Route>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param,
}

#[derive(Debug, Clone)]
struct Route {
    raw: String,
    segments: Vec<Segment>,
    wildcard: bool,
    component: String,
}

/// What a request matched, with the values Spin puts in its `spin-*` headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMatch {
    pub component: String,
    /// `spin-raw-component-route` / `spin-matched-route`: the route as written.
    pub raw_route: String,
    /// `spin-component-route`: the route without its wildcard.
    pub component_route: String,
    /// `spin-path-info`: the part of the path after the component route.
    pub path_info: String,
}

fn split(path: &str) -> Vec<&str> {
    path.split('/').filter(|s| !s.is_empty()).collect()
}

impl Route {
    /// Specificity, compared lexicographically: per segment 2 = literal, 1 = parameter;
    /// then an exact route (no wildcard) before a wildcard one.
    fn rank(&self) -> (Vec<u8>, bool) {
        let per_segment = self
            .segments
            .iter()
            .map(|s| match s {
                Segment::Literal(_) => 2,
                Segment::Param => 1,
            })
            .collect();
        (per_segment, !self.wildcard)
    }

    fn matches(&self, parts: &[&str]) -> bool {
        let n = self.segments.len();
        if parts.len() < n || (!self.wildcard && parts.len() != n) {
            return false;
        }
        self.segments.iter().zip(parts).all(|(s, p)| match s {
            Segment::Literal(l) => l == p,
            Segment::Param => true,
        })
    }
}

impl Router {
    pub fn new(triggers: &[HttpTrigger]) -> Result<Self> {
        let mut routes: Vec<Route> = Vec::new();
        for t in triggers {
            let (base, wildcard) = match t.route.strip_suffix("/...") {
                Some(prefix) => (prefix, true),
                None => (t.route.as_str(), false),
            };
            if base.contains("...") {
                bail!("route `{}`: `...` is allowed only at the end", t.route);
            }
            let segments = split(base)
                .into_iter()
                .map(|s| match s.strip_prefix(':') {
                    Some(name) if !name.is_empty() => Segment::Param,
                    _ => Segment::Literal(s.to_string()),
                })
                .collect::<Vec<_>>();
            if let Some(dup) = routes
                .iter()
                .find(|r| r.segments == segments && r.wildcard == wildcard)
            {
                bail!(
                    "route `{}` of component `{}` duplicates route `{}` of component `{}`",
                    t.route,
                    t.component,
                    dup.raw,
                    dup.component
                );
            }
            routes.push(Route {
                raw: t.route.clone(),
                segments,
                wildcard,
                component: t.component.clone(),
            });
        }
        Ok(Self { routes })
    }

    pub fn route(&self, path: &str) -> Option<RouteMatch> {
        let parts = split(path);
        let best = self
            .routes
            .iter()
            .filter(|r| r.matches(&parts))
            .max_by_key(|r| r.rank())?;
        let n = best.segments.len();
        let component_route: String = parts[..n].iter().map(|p| format!("/{p}")).collect();
        let path_info: String = parts[n..].iter().map(|p| format!("/{p}")).collect();
        let path_info = if path_info.is_empty() && path.ends_with('/') && n == 0 {
            "/".to_string()
        } else {
            path_info
        };
        Some(RouteMatch {
            component: best.component.clone(),
            raw_route: best.raw.clone(),
            component_route,
            path_info,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trigger(route: &str, component: &str) -> HttpTrigger {
        HttpTrigger {
            id: None,
            route: route.into(),
            component: component.into(),
            executor: None,
        }
    }

    fn router(routes: &[(&str, &str)]) -> Router {
        Router::new(
            &routes
                .iter()
                .map(|(r, c)| trigger(r, c))
                .collect::<Vec<_>>(),
        )
        .unwrap()
    }

    #[test]
    fn exact_beats_wildcard_and_longer_prefix_beats_shorter() {
        let r = router(&[
            ("/...", "root"),
            ("/api/...", "api"),
            ("/api/drain", "drain"),
        ]);
        assert_eq!(r.route("/api/drain").unwrap().component, "drain");
        assert_eq!(r.route("/api/drain/x").unwrap().component, "api");
        assert_eq!(r.route("/apix").unwrap().component, "root");
        assert_eq!(r.route("/").unwrap().component, "root");
    }

    #[test]
    fn a_parameter_route_beats_the_wildcard_and_loses_to_a_literal() {
        let r = router(&[
            ("/api/activities/...", "activity"),
            ("/api/activities/:id/claims", "claim"),
            ("/api/activities/special/claims", "special"),
        ]);
        assert_eq!(
            r.route("/api/activities/42/claims").unwrap().component,
            "claim"
        );
        assert_eq!(r.route("/api/activities/42").unwrap().component, "activity");
        assert_eq!(
            r.route("/api/activities/42/claims/x").unwrap().component,
            "activity"
        );
        assert_eq!(
            r.route("/api/activities/special/claims").unwrap().component,
            "special"
        );
    }

    #[test]
    fn path_info_is_what_follows_the_component_route() {
        let r = router(&[("/api/...", "api")]);
        let m = r.route("/api/activities/7").unwrap();
        assert_eq!(m.path_info, "/activities/7");
        assert_eq!(m.component_route, "/api");
        assert_eq!(m.raw_route, "/api/...");
        assert_eq!(r.route("/api").unwrap().path_info, "");
    }

    #[test]
    fn unknown_paths_match_nothing() {
        let r = router(&[("/api/...", "api"), ("/health", "h")]);
        assert!(r.route("/other").is_none());
        assert!(r.route("/health/x").is_none());
    }

    #[test]
    fn duplicate_routes_are_refused() {
        assert!(Router::new(&[trigger("/a/...", "x"), trigger("/a/...", "y")]).is_err());
        assert!(Router::new(&[trigger("/a/:id", "x"), trigger("/a/:other", "y")]).is_err());
    }
}
