//! Permissions, roles, entitlements and the pure `decide` function (DESIGN.md §3).
//!
//! Pure: no I/O, no async, no logging, no panics on data (problems come back as values).
//! Roles are compiled once per config load into bitsets over the *permission universe* (every
//! concrete permission a route requires), so a decision is a handful of bit tests, never a scan
//! over roles or patterns. Tenants and principals are compiled the same way when the grant
//! store loads them (`Policy::tenant`, `Policy::principal`; the results are what `grants`
//! caches).
//!
//! # Evaluation order
//!
//! `no_route` (the caller builds `Verdict::no_route`) → `unauthenticated` (no identity on a
//! non-public route) → then each required permission is checked alone, first failure wins:
//!
//! 1. `feature_disabled`: a matching `require_feature` names a feature the tenant lacks;
//! 2. `tier_required`: the tenant's tier is below the highest tier a matching `require_tier`
//!    names (a tenant with no record, or no tier, fails every tier requirement);
//! 3. `denied_by_override`: a per-user `deny` pattern matches (beats roles, `grant` and `own`);
//! 4. `missing_permission`: neither a full grant (roles' `permissions`, per-user `grant`) nor
//!    an `own` grant;
//! 5. `not_owner`: the permission is held only through `own` and the route's owner parameter is
//!    not exactly the subject (own-only on a route without owner parameter is allowed, with
//!    `Grant::own_only`, so the upstream filters to the caller's records);
//! 6. `scope_denied`: the principal has a non-empty `scopes` list and the route's scope value is
//!    not in it;
//! 7. `mfa_required` (401): the route or a matching `[entitlements.mfa]` pattern needs MFA.
//!
//! `all_of` checks in list order and reports the first failure; `any_of` allows on the first
//! option passing every check with a full grant, else on the first passing own-only option,
//! else reports the first option's failure. Holding a permission both fully and through `own`
//! counts as full. Monitor mode computes the same outcome but hands out a `Grant` anyway.
//!
//! # `all_scopes`, per permission
//!
//! `all_scopes` exempts a *grant* from the scope check, not the principal: a permission passes
//! the scope check unchecked only if the grant the decision relies on (full, or `own` when the
//! permission is own-only) comes from a role with `all_scopes` (directly or inherited). Holding
//! an `all_scopes` role that grants `campaigns.view` does not make a scoped role's
//! `campaigns.delete` unscoped, and per-user `grant` patterns are always scoped. This keeps a
//! narrow all-scopes role (say `brand_auditor`) from widening everything else the user holds.
//!
//! # Bad data fails closed
//!
//! Config errors (`Policy::compile`) are all reported and nothing compiles. Grant-store data is
//! compiled best effort, with problems returned alongside: an unknown tier means no tier; a
//! custom role with a bad pattern, unknown parent or cycle grants nothing (a custom role named
//! like a built-in role or alias is ignored: the built-in wins); an unknown assigned role grants
//! nothing; a malformed `grant` pattern is skipped; a malformed `deny` pattern voids the whole
//! principal, because skipping a deny would widen access.
//!
//! `Grant` is a capability: only this module can construct one, and `proxy` forwards a request
//! only with a `&Grant` in hand.

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod bitset;
mod compile;
mod eval;
pub mod explain;
pub mod permission;
#[cfg(test)]
mod tests;

pub(crate) use compile::edit_distance;
pub use eval::decide;
pub use permission::{Pattern, PatternError};

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use bitset::BitSet;
use compile::CompiledRole;

/// Index of a concrete permission in the compiled universe (route-required permissions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PermId(pub(crate) u32);

impl PermId {
    pub(crate) fn index(self) -> usize {
        self.0 as usize
    }
}

/// The permission separator when the config names none.
pub const DEFAULT_SEPARATOR: char = '.';

/// Enforcement mode, global or per route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    #[default]
    Enforce,
    /// Decide and audit, but forward everything except `no_route` and malformed requests.
    Monitor,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Monitor => "monitor",
        }
    }
}

// === definitions (input to `Policy::compile`, produced by `config`) ===

/// A role as written in the TOML roles file or a tenant's custom roles.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RoleDef {
    pub name: String,
    pub permissions: Vec<String>,
    pub own: Vec<String>,
    pub inherits: Vec<String>,
    pub level: Option<i64>,
    pub all_scopes: bool,
}

/// Everything `Policy::compile` needs; `config` builds it from the TOML.
/// `Default` uses the default separator `.`.
#[derive(Debug, Clone)]
pub struct PolicyDef {
    pub separator: char,
    pub roles: Vec<RoleDef>,
    /// `(alias, role)` pairs, one level.
    pub aliases: Vec<(String, String)>,
    /// Tier names, lowest first.
    pub tiers: Vec<String>,
    /// `(pattern, tier)` pairs.
    pub require_tier: Vec<(String, String)>,
    /// `(pattern, feature)` pairs.
    pub require_feature: Vec<(String, String)>,
    /// Patterns whose permissions need `amr` to contain `mfa`.
    pub mfa: Vec<String>,
    /// Every concrete permission named by a route requirement (the universe), in route order.
    /// Duplicates are allowed and collapse to one `PermId`.
    pub route_permissions: Vec<String>,
}

impl Default for PolicyDef {
    fn default() -> PolicyDef {
        PolicyDef {
            separator: DEFAULT_SEPARATOR,
            roles: Vec::new(),
            aliases: Vec::new(),
            tiers: Vec::new(),
            require_tier: Vec::new(),
            require_feature: Vec::new(),
            mfa: Vec::new(),
            route_permissions: Vec::new(),
        }
    }
}

/// Where in a `PolicyDef` an error sits, so `config` can point at the file and line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// `field` is `permissions`, `own` or `inherits`; `index` is the position in that list.
    /// A duplicate role is reported with `field` `name` and its index in `PolicyDef::roles`.
    Role {
        role: String,
        field: &'static str,
        index: usize,
    },
    Alias {
        alias: String,
    },
    RequireTier {
        index: usize,
    },
    RequireFeature {
        index: usize,
    },
    Mfa {
        index: usize,
    },
    RoutePermission {
        index: usize,
    },
    /// Per-principal data (a store's assignment): `field` is `roles`, `grant`, `deny`, `scopes`.
    Subject {
        field: &'static str,
        index: usize,
    },
    /// Tenant data: `field` is `tier` or `features` or `roles`.
    Tenant {
        field: &'static str,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct PolicyError {
    pub at: Location,
    /// Lowercase, no trailing period, user input in backticks.
    pub message: String,
    /// How to fix it, when we can tell.
    pub help: Option<String>,
}

/// A principal's own assignment in one tenant, as a store returns it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct SubjectData {
    pub roles: Vec<String>,
    pub grant: Vec<String>,
    pub deny: Vec<String>,
    pub scopes: Vec<String>,
}

/// A tenant's record, as a store returns it. `None` tier fails every `require_tier`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TenantData {
    pub tier: Option<String>,
    pub features: Vec<String>,
    /// Tenant custom roles; a built-in role of the same name wins.
    pub custom_roles: Vec<RoleDef>,
}

// === compiled policy ===

/// The compiled policy: roles flattened into permission bitsets, entitlements pre-indexed.
#[derive(Debug, Clone)]
pub struct Policy {
    sep: char,
    /// `PermId` → name. INVARIANT: every per-permission table below has this length.
    universe: Box<[String]>,
    ids: HashMap<String, PermId>,
    roles: Box<[CompiledRole]>,
    /// Role names and aliases → index in `roles`.
    role_index: HashMap<String, usize>,
    /// Lowest first; a rank is an index.
    tiers: Box<[String]>,
    tier_rank: HashMap<String, u32>,
    /// Features named by `require_feature`, interned; others cannot change a decision.
    features: Box<[String]>,
    feature_index: HashMap<String, u32>,
    /// Per permission: rank of the highest tier any matching `require_tier` pattern needs.
    perm_tier: Box<[Option<u32>]>,
    /// Per permission: every feature a matching `require_feature` pattern needs.
    perm_features: Box<[Box<[u32]>]>,
    /// Permissions matching an `[entitlements.mfa]` pattern.
    mfa: BitSet,
    /// The definitions as written, kept for explain traces and lint (never read by `decide`).
    def: std::sync::Arc<PolicyDef>,
}

/// A tenant's compiled custom roles and entitlements (tier rank, features).
/// `Default` is a tenant with no record: no tier, no features, no custom roles.
#[derive(Debug, Clone, Default)]
pub struct TenantGrants {
    tier: Option<u32>,
    features: BitSet,
    roles: Vec<CompiledRole>,
    role_index: HashMap<String, usize>,
    /// The accepted custom roles as written (explain traces; same order as `roles`).
    custom_defs: Vec<RoleDef>,
    /// The tier and features as the store holds them (explain, `/me`).
    data_tier: Option<String>,
    data_features: Vec<String>,
}

/// A principal's effective grants in one tenant: what `decide` consults.
/// `Default` grants nothing.
#[derive(Debug, Clone, Default)]
pub struct PrincipalGrants {
    full: BitSet,
    own: BitSet,
    /// Full grants coming from an `all_scopes` role (exempt from the `scopes` check).
    scope_free_full: BitSet,
    /// `own` grants coming from an `all_scopes` role.
    scope_free_own: BitSet,
    deny: BitSet,
    scopes: Box<[String]>,
    /// Shared with every audit event of the principal (`role_names_shared`): no copy per event.
    role_names: Arc<[String]>,
    /// The assignment as the store holds it (role names before alias resolution, override
    /// patterns), kept for explain traces and access reviews; `decide` reads the bitsets only.
    source: SubjectData,
}

impl PrincipalGrants {
    /// The assignment this was compiled from (roles as assigned, `grant`/`deny` patterns).
    pub fn source(&self) -> &SubjectData {
        &self.source
    }

    /// The principal's sub-tenant scopes (empty: unrestricted).
    pub fn scopes(&self) -> &[String] {
        &self.scopes
    }

    /// Effective role names after alias resolution, each once (for `x-authz-roles`, audit).
    pub fn role_names(&self) -> &[String] {
        &self.role_names
    }

    /// The same names, for an audit event to hold without copying them.
    pub fn role_names_shared(&self) -> Arc<[String]> {
        self.role_names.clone()
    }
}

// === decision ===

/// What a route requires (permissions are concrete, resolved to ids at config load).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    Public,
    Permission(PermId),
    AnyOf(Box<[PermId]>),
    AllOf(Box<[PermId]>),
}

/// A route's compiled rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub requirement: Requirement,
    /// The route names an `owner` parameter (its value is passed in `Caller::owner`).
    pub has_owner: bool,
    /// The route names a `scope` parameter (its value is passed in `Caller::scope`).
    pub has_scope: bool,
    pub mfa: bool,
    /// Effective mode (route override or global).
    pub mode: Mode,
}

/// The verified caller and the request facts `decide` needs.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    pub subject: &'a str,
    /// `amr` contains `"mfa"`.
    pub mfa: bool,
    /// Value of the route's owner parameter, decoded segment.
    pub owner: Option<&'a str>,
    /// Value of the route's scope parameter.
    pub scope: Option<&'a str>,
}

/// Why a request is denied; the wire names are `as_str`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    NoRoute,
    MissingToken,
    InvalidToken,
    TokenExpired,
    MissingTenant,
    FeatureDisabled,
    TierRequired,
    DeniedByOverride,
    MissingPermission,
    NotOwner,
    ScopeDenied,
    MfaRequired,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NoRoute => "no_route",
            Reason::MissingToken => "missing_token",
            Reason::InvalidToken => "invalid_token",
            Reason::TokenExpired => "token_expired",
            Reason::MissingTenant => "missing_tenant",
            Reason::FeatureDisabled => "feature_disabled",
            Reason::TierRequired => "tier_required",
            Reason::DeniedByOverride => "denied_by_override",
            Reason::MissingPermission => "missing_permission",
            Reason::NotOwner => "not_owner",
            Reason::ScopeDenied => "scope_denied",
            Reason::MfaRequired => "mfa_required",
        }
    }

    /// 401 for identity failures and MFA step-up, 404 for no route, 403 otherwise.
    pub fn status(self) -> u16 {
        match self {
            Reason::NoRoute => 404,
            Reason::MissingToken
            | Reason::InvalidToken
            | Reason::TokenExpired
            | Reason::MissingTenant
            | Reason::MfaRequired => 401,
            Reason::FeatureDisabled
            | Reason::TierRequired
            | Reason::DeniedByOverride
            | Reason::MissingPermission
            | Reason::NotOwner
            | Reason::ScopeDenied => 403,
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A denial: the reason and what was missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub reason: Reason,
    pub permission: Option<PermId>,
    pub required_tier: Option<String>,
    pub required_feature: Option<String>,
}

/// What enforce mode would do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `own_only`: the decision rests on an `own` grant (forward with `x-authz-scope: own`).
    /// `relied_on`: the permission the allow rests on (`None` for public routes).
    Allow {
        own_only: bool,
        relied_on: Option<PermId>,
    },
    Deny(Denial),
}

/// The permission to forward one request. Only this module constructs it.
#[derive(Debug)]
pub struct Grant {
    own_only: bool,
}

impl Grant {
    /// Forward with `x-authz-scope: own`.
    pub fn own_only(&self) -> bool {
        self.own_only
    }
}

/// `decide`'s answer: the outcome enforce mode would give, and a `Grant` when the request may
/// be forwarded (allowed, or denied in monitor mode — never for `no_route`).
#[derive(Debug)]
pub struct Verdict {
    pub outcome: Outcome,
    grant: Option<Grant>,
}

impl Verdict {
    pub fn grant(&self) -> Option<&Grant> {
        self.grant.as_ref()
    }

    pub fn is_allow(&self) -> bool {
        matches!(self.outcome, Outcome::Allow { .. })
    }

    /// No route matched: always denied, never forwarded, even in monitor mode.
    pub fn no_route() -> Verdict {
        Verdict {
            outcome: Outcome::Deny(Denial {
                reason: Reason::NoRoute,
                permission: None,
                required_tier: None,
                required_feature: None,
            }),
            grant: None,
        }
    }

    /// Identity failed on a non-public route (`reason` is one of the 401 token reasons).
    /// Forwarded only in monitor mode, without identity headers.
    pub fn unauthenticated(reason: Reason, mode: Mode) -> Verdict {
        Verdict {
            outcome: Outcome::Deny(Denial {
                reason,
                permission: None,
                required_tier: None,
                required_feature: None,
            }),
            grant: match mode {
                Mode::Enforce => None,
                Mode::Monitor => Some(Grant { own_only: false }),
            },
        }
    }
}
