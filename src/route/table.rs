//! Compiled route table: one matchit router per method; HEAD falls back to GET.

use std::collections::HashMap;

use http::Method;

/// A route pattern could not be added.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteConflict {
    /// The same (method, path) or an ambiguous one is already taken by route `existing`.
    #[error("conflicts with route #{existing} ({message})")]
    Conflict { existing: usize, message: String },
    /// The pattern itself is invalid for matchit.
    #[error("{0}")]
    Invalid(String),
}

/// A router under construction, with the patterns inserted so far (to name conflicts).
#[derive(Debug, Default)]
struct PendingRouter {
    router: matchit::Router<usize>,
    inserted: Vec<(String, usize)>,
}

#[derive(Debug, Default)]
pub struct RouteTableBuilder {
    routers: HashMap<Method, PendingRouter>,
}

impl RouteTableBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add `path` for `method`, pointing at route `id`.
    pub fn insert(&mut self, method: &Method, path: &str, id: usize) -> Result<(), RouteConflict> {
        let PendingRouter { router, inserted } = self.routers.entry(method.clone()).or_default();
        match router.insert(path, id) {
            Ok(()) => {
                inserted.push((path.to_owned(), id));
                Ok(())
            }
            Err(err) => {
                let message = err.to_string();
                let existing = match &err {
                    matchit::InsertError::Conflict { with } => {
                        inserted.iter().find(|(p, _)| p == with).map(|(_, id)| *id)
                    }
                    _ => None,
                };
                match existing {
                    Some(existing) => Err(RouteConflict::Conflict { existing, message }),
                    None => Err(RouteConflict::Invalid(message)),
                }
            }
        }
    }

    pub fn build(self) -> RouteTable {
        let mut routers: Vec<_> = self
            .routers
            .into_iter()
            .map(|(m, pending)| (m, pending.router))
            .collect();
        // The usual methods first: `lookup` scans.
        const USUAL: [Method; 4] = [Method::GET, Method::POST, Method::HEAD, Method::PUT];
        routers.sort_by_key(|(m, _)| USUAL.iter().position(|u| u == m).unwrap_or(USUAL.len()));
        RouteTable { routers }
    }
}

/// Immutable while serving; a reload builds a new one.
#[derive(Debug, Default)]
pub struct RouteTable {
    /// One router per method, found by a scan: a handful of methods compare faster than a
    /// `Method` hashes.
    routers: Vec<(Method, matchit::Router<usize>)>,
}

/// A matched route: its id and the path parameters (borrowed from the canonical path).
#[derive(Debug)]
pub struct RouteMatch<'p> {
    pub id: usize,
    pub params: matchit::Params<'p, 'p>,
}

impl RouteTable {
    /// Match a canonical path. HEAD uses the GET route of the same path when no HEAD route
    /// matches it. A path matched only under other methods is no match (`no_route`).
    pub fn lookup<'p>(&'p self, method: &Method, path: &'p str) -> Option<RouteMatch<'p>> {
        let found = self.router(method).and_then(|router| router.at(path).ok());
        let found = match found {
            Some(m) => Some(m),
            None if method == Method::HEAD => self
                .router(&Method::GET)
                .and_then(|router| router.at(path).ok()),
            None => None,
        };
        found.map(|m| RouteMatch {
            id: *m.value,
            params: m.params,
        })
    }

    fn router(&self, method: &Method) -> Option<&matchit::Router<usize>> {
        self.routers
            .iter()
            .find(|(m, _)| m == method)
            .map(|(_, router)| router)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(routes: &[(&str, &str)]) -> RouteTable {
        let mut b = RouteTableBuilder::new();
        for (id, (m, p)) in routes.iter().enumerate() {
            b.insert(&m.parse().unwrap(), p, id).unwrap();
        }
        b.build()
    }

    #[test]
    fn static_beats_param_beats_catch_all() {
        let t = table(&[
            ("GET", "/api/campaigns/new"),
            ("GET", "/api/campaigns/{id}"),
            ("GET", "/api/{*rest}"),
        ]);
        assert_eq!(t.lookup(&Method::GET, "/api/campaigns/new").unwrap().id, 0);
        let m = t.lookup(&Method::GET, "/api/campaigns/42").unwrap();
        assert_eq!((m.id, m.params.get("id")), (1, Some("42")));
        assert_eq!(t.lookup(&Method::GET, "/api/x/y/z").unwrap().id, 2);
        assert!(
            t.lookup(&Method::GET, "/api").is_none(),
            "catch-all needs a segment"
        );
    }

    #[test]
    fn exact_match_case_and_trailing_slash_count() {
        let t = table(&[("GET", "/api/campaigns/{id}")]);
        assert!(t.lookup(&Method::GET, "/api/campaigns/42/").is_none());
        assert!(t.lookup(&Method::GET, "/API/campaigns/42").is_none());
    }

    #[test]
    fn head_falls_back_to_get_but_other_methods_do_not() {
        let t = table(&[("GET", "/a"), ("HEAD", "/b"), ("POST", "/c")]);
        assert_eq!(t.lookup(&Method::HEAD, "/a").unwrap().id, 0);
        assert_eq!(t.lookup(&Method::HEAD, "/b").unwrap().id, 1);
        assert!(t.lookup(&Method::HEAD, "/c").is_none());
        assert!(
            t.lookup(&Method::GET, "/c").is_none(),
            "matched only under POST"
        );
    }

    #[test]
    fn conflicts_name_the_existing_route() {
        let mut b = RouteTableBuilder::new();
        b.insert(&Method::GET, "/a/{id}", 0).unwrap();
        b.insert(&Method::POST, "/a/{id}", 1).unwrap();
        let err = b.insert(&Method::GET, "/a/{id}", 2).unwrap_err();
        assert!(
            matches!(err, RouteConflict::Conflict { existing: 0, .. }),
            "{err:?}"
        );
        let err = b.insert(&Method::GET, "/a/{other}", 3).unwrap_err();
        assert!(
            matches!(err, RouteConflict::Conflict { existing: 0, .. }),
            "{err:?}"
        );
    }
}
