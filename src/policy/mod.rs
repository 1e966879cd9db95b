//! Permissions, roles, entitlements and the pure `decide` function (DESIGN.md §3).
//!
//! INTERFACE SKELETON: the public items below are the contract other modules code against.
//! Bodies marked `todo!()` are to be implemented; signatures may only gain, not lose, capability.
//!
//! Pure: no I/O, no async, no logging, no panics on data. Roles are compiled once per config load
//! into bitsets over the *permission universe* (every concrete permission a route requires), so a
//! decision is a handful of bit tests, never a scan over roles or patterns.
//!
//! `Grant` is a capability: only this module can construct one, and `proxy` forwards a request
//! only with a `&Grant` in hand.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod permission;

use std::fmt;

/// Index of a concrete permission in the compiled universe (route-required permissions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PermId(pub(crate) u32);

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
#[derive(Debug, Clone, Default)]
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

/// Where in a `PolicyDef` an error sits, so `config` can point at the file and line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// `field` is `permissions`, `own` or `inherits`; `index` is the position in that list.
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
#[derive(Debug, Clone, Default, PartialEq)]
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
    // implementation-defined
}

/// A tenant's compiled custom roles and entitlements (tier rank, features).
#[derive(Debug, Clone, Default)]
pub struct TenantGrants {
    // implementation-defined
}

/// A principal's effective grants in one tenant: what `decide` consults.
#[derive(Debug, Clone, Default)]
pub struct PrincipalGrants {
    // implementation-defined
}

impl Policy {
    /// Compile and validate; reports every error at once.
    pub fn compile(def: &PolicyDef) -> Result<Policy, Vec<PolicyError>> {
        let _ = def;
        todo!()
    }

    pub fn separator(&self) -> char {
        todo!()
    }

    /// The id of a concrete route permission, if it is in the universe.
    pub fn permission_id(&self, name: &str) -> Option<PermId> {
        let _ = name;
        todo!()
    }

    pub fn permission_name(&self, id: PermId) -> &str {
        let _ = id;
        todo!()
    }

    /// Role names (built-in and aliases) that exist, for validating assignments.
    pub fn has_role(&self, name_or_alias: &str) -> bool {
        let _ = name_or_alias;
        todo!()
    }

    /// Compile a tenant record. Problems (unknown tier, bad custom-role pattern, cycle) are
    /// returned alongside a best-effort result that never grants more than the valid data says.
    pub fn tenant(&self, data: &TenantData) -> (TenantGrants, Vec<PolicyError>) {
        let _ = data;
        todo!()
    }

    /// Compile a principal. An unknown role grants nothing (reported); a malformed `deny`
    /// pattern makes the whole principal grant nothing (a skipped deny would widen access).
    pub fn principal(
        &self,
        tenant: &TenantGrants,
        subject: &SubjectData,
    ) -> (PrincipalGrants, Vec<PolicyError>) {
        let _ = (tenant, subject);
        todo!()
    }

    /// Effective role names of a principal after alias resolution (for `x-authz-roles`, audit).
    pub fn role_names<'a>(&'a self, principal: &'a PrincipalGrants) -> &'a [String] {
        let _ = principal;
        todo!()
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

/// Decide one request. `who` is `None` when no identity was presented or verified (only a
/// public route can then allow). Evaluation order and pinned rules: DESIGN.md §3.
pub fn decide(
    policy: &Policy,
    rule: &Rule,
    who: Option<(&Caller<'_>, &TenantGrants, &PrincipalGrants)>,
) -> Verdict {
    let _ = (policy, rule, who);
    todo!()
}
