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

#[derive(Debug, Default)]
pub struct RouteTableBuilder {
    routers: HashMap<Method, (matchit::Router<usize>, Vec<(String, usize)>)>,
}

impl RouteTableBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add `path` for `method`, pointing at route `id`.
    pub fn insert(&mut self, method: &Method, path: &str, id: usize) -> Result<(), RouteConflict> {
        let (router, inserted) = self.routers.entry(method.clone()).or_default();
        match router.insert(path, id) {
            Ok(()) => {
                inserted.push((path.to_owned(), id));
                Ok(())
            }
            Err(err) => {
                let message = err.to_string();
                let existing = match &err {
                    matchit::InsertError::Conflict { with } => inserted
                        .iter()
                        .find(|(p, _)| p == with)
                        .map(|(_, id)| *id),
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
        RouteTable {
            routers: self.routers.into_iter().map(|(m, (r, _))| (m, r)).collect(),
        }
    }
}

/// Immutable while serving; a reload builds a new one.
#[derive(Debug, Default)]
pub struct RouteTable {
    routers: HashMap<Method, matchit::Router<usize>>,
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
        let found = self
            .routers
            .get(method)
            .and_then(|router| router.at(path).ok());
        let found = match found {
            Some(m) => Some(m),
            None if method == Method::HEAD => self
                .routers
                .get(&Method::GET)
                .and_then(|router| router.at(path).ok()),
            None => None,
        };
        found.map(|m| RouteMatch {
            id: *m.value,
            params: m.params,
        })
    }
}
