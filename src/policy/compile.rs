//! Compiling definitions into bitsets: the policy (config load), a tenant record and a principal
//! (grant-store load, cached). Everything pattern-shaped is resolved here, against the
//! permission universe, so `decide` only tests bits.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use super::bitset::BitSet;
use super::permission::{self, Pattern, PatternError};
use super::{
    Location, PermId, Policy, PolicyDef, PolicyError, PrincipalGrants, RoleDef, SubjectData,
    TenantData, TenantGrants,
};

/// A role with inheritance flattened: everything it grants, directly or through its parents.
#[derive(Debug, Clone)]
pub(crate) struct CompiledRole {
    pub(crate) name: String,
    /// Full grants (scope "all" within the tenant).
    pub(crate) full: BitSet,
    /// Grants only on resources the caller owns.
    pub(crate) own: BitSet,
    /// The role (or one it inherits) bypasses sub-tenant scoping.
    pub(crate) all_scopes: bool,
    /// Informational (ordering, reviews); grants nothing.
    pub(crate) level: Option<i64>,
}

fn error(at: Location, message: String, help: Option<String>) -> PolicyError {
    PolicyError { at, message, help }
}

fn pattern_error(at: Location, context: &str, e: &PatternError) -> PolicyError {
    let message = if context.is_empty() {
        e.to_string()
    } else {
        format!("{context}: {e}")
    };
    error(at, message, Some(e.help()))
}

/// Levenshtein distance, for "did you mean" hints (also used by `config`).
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = Vec::with_capacity(b.len() + 1);
        cur.push(i + 1);
        for (j, cb) in b.iter().enumerate() {
            let sub = prev.get(j).copied().unwrap_or(usize::MAX - 1) + usize::from(ca != *cb);
            let del = prev.get(j + 1).copied().unwrap_or(usize::MAX - 1) + 1;
            let ins = cur.get(j).copied().unwrap_or(usize::MAX - 1) + 1;
            cur.push(sub.min(del).min(ins));
        }
        prev = cur;
    }
    prev.last().copied().unwrap_or(0)
}

/// `did you mean `x`?` when a candidate is close, else the list of valid names.
pub(crate) fn unknown_help<'a>(
    input: &str,
    candidates: impl IntoIterator<Item = &'a str>,
    what: &str,
) -> String {
    let mut all: Vec<&str> = candidates.into_iter().collect();
    all.sort_unstable();
    all.dedup();
    let close = all
        .iter()
        .map(|c| (edit_distance(input, c), *c))
        .filter(|(d, c)| *d <= (c.chars().count().max(input.chars().count()) / 3).max(1))
        .min();
    if let Some((_, c)) = close {
        return format!("did you mean `{c}`?");
    }
    if all.is_empty() {
        return format!("no {what} are defined");
    }
    let list: Vec<String> = all.iter().map(|c| format!("`{c}`")).collect();
    format!("valid {what}: {}", list.join(", "))
}

/// Parse `patterns` and set the bits of every universe permission they match. A malformed
/// pattern is passed to `on_error` with its index and contributes nothing.
fn match_patterns(
    patterns: &[String],
    sep: char,
    universe: &[String],
    mut on_error: impl FnMut(usize, PatternError),
) -> BitSet {
    let mut bits = BitSet::new(universe.len());
    for (index, raw) in patterns.iter().enumerate() {
        match Pattern::parse(raw, sep) {
            Ok(pattern) => {
                for (id, name) in universe.iter().enumerate() {
                    if pattern.matches(name) {
                        bits.set(id);
                    }
                }
            }
            Err(e) => on_error(index, e),
        }
    }
    bits
}

// === role flattening (shared by built-in and tenant custom roles) ===

/// A role being compiled: its direct grants and resolved parents.
struct RoleNode<'a> {
    def: &'a RoleDef,
    full: BitSet,
    own: BitSet,
    /// `(position in inherits, node index)` for parents compiled in the same batch.
    local: Vec<(usize, usize)>,
    /// Parents compiled earlier (built-in roles, for tenant custom roles), already flat.
    external: Vec<&'a CompiledRole>,
    /// A node with a bad pattern, unknown parent or in a cycle grants nothing.
    valid: bool,
}

/// Node indices reachable from `start` through local edges, `start` excluded unless on a
/// cycle. `skip` nodes are neither entered nor traversed. Returns predecessors for paths.
fn reach(nodes: &[RoleNode<'_>], start: usize, skip: &[bool]) -> HashMap<usize, usize> {
    let mut pred = HashMap::new();
    let mut queue = VecDeque::from([start]);
    while let Some(n) = queue.pop_front() {
        let Some(node) = nodes.get(n) else { continue };
        for &(_, p) in &node.local {
            if skip.get(p).copied().unwrap_or(true) || pred.contains_key(&p) {
                continue;
            }
            pred.insert(p, n);
            queue.push_back(p);
        }
    }
    pred
}

/// Find inheritance cycles (each reported once, rotated to start at its lowest index), then
/// flatten every node. Nodes in a cycle, and invalid nodes, flatten to empty grants, and
/// nothing is inherited through them.
fn flatten(nodes: &mut [RoleNode<'_>]) -> (Vec<CompiledRole>, Vec<Vec<usize>>) {
    let none = vec![false; nodes.len()];
    let mut cycles: Vec<Vec<usize>> = Vec::new();
    let mut seen: HashSet<Vec<usize>> = HashSet::new();
    let mut in_cycle = vec![false; nodes.len()];
    for start in 0..nodes.len() {
        let pred = reach(nodes, start, &none);
        if !pred.contains_key(&start) {
            continue;
        }
        // Walk predecessors back from `start` to itself: the path start -> ... -> start.
        let mut path = vec![start];
        let mut cur = start;
        while let Some(&p) = pred.get(&cur) {
            if p == start || path.len() > nodes.len() {
                break;
            }
            path.push(p);
            cur = p;
        }
        path.reverse();
        // `path` now lists the cycle in inheritance order, ending at the node before `start`
        // (or `[start]` for self-inheritance). Rotate so the lowest index comes first.
        let min_pos = path
            .iter()
            .enumerate()
            .min_by_key(|(_, n)| **n)
            .map_or(0, |(i, _)| i);
        path.rotate_left(min_pos);
        for &n in &path {
            if let Some(flag) = in_cycle.get_mut(n) {
                *flag = true;
            }
        }
        if seen.insert(path.clone()) {
            cycles.push(path);
        }
    }
    for (node, cyc) in nodes.iter_mut().zip(&in_cycle) {
        if *cyc {
            node.valid = false;
        }
    }
    let skip: Vec<bool> = nodes.iter().map(|n| !n.valid).collect();
    let mut out = Vec::with_capacity(nodes.len());
    for (i, node) in nodes.iter().enumerate() {
        let mut role = CompiledRole {
            name: node.def.name.clone(),
            full: BitSet::default(),
            own: BitSet::default(),
            all_scopes: false,
            level: node.def.level,
        };
        if node.valid {
            let reached = reach(nodes, i, &skip);
            let members = std::iter::once(i).chain(reached.keys().copied());
            for m in members {
                let Some(member) = nodes.get(m) else { continue };
                role.full.union_with(&member.full);
                role.own.union_with(&member.own);
                role.all_scopes |= member.def.all_scopes;
                for ext in &member.external {
                    role.full.union_with(&ext.full);
                    role.own.union_with(&ext.own);
                    role.all_scopes |= ext.all_scopes;
                }
            }
        }
        out.push(role);
    }
    (out, cycles)
}

/// Render a cycle as `a -> b -> a` and locate it at the first role's inherits entry.
fn cycle_error(
    nodes: &[RoleNode<'_>],
    cycle: &[usize],
    at: impl FnOnce(&str, usize) -> Location,
) -> PolicyError {
    let names: Vec<&str> = cycle
        .iter()
        .chain(cycle.first())
        .filter_map(|&n| nodes.get(n).map(|node| node.def.name.as_str()))
        .collect();
    let rendered = names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(" -> ");
    let first = cycle.first().and_then(|&n| nodes.get(n));
    let next = cycle.get(1).or(cycle.first()).copied();
    let (role, index) = first.map_or(("", 0), |node| {
        let index = node
            .local
            .iter()
            .find(|(_, p)| Some(*p) == next)
            .map_or(0, |(i, _)| *i);
        (node.def.name.as_str(), index)
    });
    error(
        at(role, index),
        format!("role inheritance cycle: {rendered}"),
        Some("roles inherit transitively and may not inherit themselves; remove one of these `inherits` entries".to_owned()),
    )
}

// === impl Policy ===

impl Policy {
    /// Compile and validate; reports every error at once.
    pub fn compile(def: &PolicyDef) -> Result<Policy, Vec<PolicyError>> {
        let sep = def.separator;
        let mut errors = Vec::new();

        // The universe: route-required permissions, concrete, deduplicated in first-seen order.
        let mut universe: Vec<String> = Vec::new();
        let mut ids: HashMap<String, PermId> = HashMap::new();
        for (index, name) in def.route_permissions.iter().enumerate() {
            if let Err(e) = permission::validate_name(name, sep) {
                errors.push(pattern_error(
                    Location::RoutePermission { index },
                    "route permission",
                    &e,
                ));
                continue;
            }
            if ids.contains_key(name) {
                continue;
            }
            let Ok(id) = u32::try_from(universe.len()) else {
                errors.push(error(
                    Location::RoutePermission { index },
                    "too many distinct route permissions".to_owned(),
                    None,
                ));
                break;
            };
            ids.insert(name.clone(), PermId(id));
            universe.push(name.clone());
        }

        // Role names, then aliases (both resolve to a role index).
        let mut role_index: HashMap<String, usize> = HashMap::new();
        for (i, role) in def.roles.iter().enumerate() {
            if role_index.contains_key(&role.name) {
                errors.push(error(
                    Location::Role {
                        role: role.name.clone(),
                        field: "name",
                        index: i,
                    },
                    format!("duplicate role `{}`", role.name),
                    Some("each role is defined once; merge the definitions".to_owned()),
                ));
                continue;
            }
            role_index.insert(role.name.clone(), i);
        }
        let role_names = || def.roles.iter().map(|r| r.name.as_str());
        let mut names = role_index.clone();
        for (alias, target) in &def.aliases {
            let at = Location::Alias {
                alias: alias.clone(),
            };
            if role_index.contains_key(alias) {
                errors.push(error(
                    at,
                    format!("alias `{alias}` has the name of a role"),
                    Some(format!(
                        "an alias maps a legacy name onto a role; rename the alias or the role `{alias}`"
                    )),
                ));
                continue;
            }
            if names.contains_key(alias) {
                errors.push(error(
                    at,
                    format!("duplicate alias `{alias}`"),
                    Some("each alias names one role".to_owned()),
                ));
                continue;
            }
            match role_index.get(target) {
                Some(&i) => {
                    names.insert(alias.clone(), i);
                }
                None => {
                    let is_alias = def.aliases.iter().any(|(a, _)| a == target);
                    let help = if is_alias {
                        format!(
                            "aliases are one level: `{target}` is itself an alias; name the role it stands for"
                        )
                    } else {
                        unknown_help(target, role_names(), "roles")
                    };
                    errors.push(error(
                        at,
                        format!("alias `{alias}` names unknown role `{target}`"),
                        Some(help),
                    ));
                }
            }
        }

        // Direct grants and parents of each role.
        let mut nodes: Vec<RoleNode<'_>> = Vec::with_capacity(def.roles.len());
        for role in &def.roles {
            let mut valid = true;
            let mut compile_field = |field: &'static str, patterns: &[String]| {
                match_patterns(patterns, sep, &universe, |index, e| {
                    valid = false;
                    errors.push(pattern_error(
                        Location::Role {
                            role: role.name.clone(),
                            field,
                            index,
                        },
                        "",
                        &e,
                    ));
                })
            };
            let full = compile_field("permissions", &role.permissions);
            let own = compile_field("own", &role.own);
            let mut local = Vec::new();
            for (index, parent) in role.inherits.iter().enumerate() {
                match names.get(parent) {
                    Some(&p) => local.push((index, p)),
                    None => {
                        valid = false;
                        errors.push(error(
                            Location::Role {
                                role: role.name.clone(),
                                field: "inherits",
                                index,
                            },
                            format!("role `{}` inherits unknown role `{parent}`", role.name),
                            Some(unknown_help(
                                parent,
                                names.keys().map(String::as_str),
                                "roles",
                            )),
                        ));
                    }
                }
            }
            nodes.push(RoleNode {
                def: role,
                full,
                own,
                local,
                external: Vec::new(),
                valid,
            });
        }
        let (roles, cycles) = flatten(&mut nodes);
        for cycle in &cycles {
            errors.push(cycle_error(&nodes, cycle, |role, index| Location::Role {
                role: role.to_owned(),
                field: "inherits",
                index,
            }));
        }

        // Entitlements, precomputed per universe permission.
        let mut tier_rank: HashMap<String, u32> = HashMap::new();
        for (rank, tier) in def.tiers.iter().enumerate() {
            if let Ok(rank) = u32::try_from(rank) {
                tier_rank.entry(tier.clone()).or_insert(rank);
            }
        }
        let mut perm_tier: Vec<Option<u32>> = vec![None; universe.len()];
        for (index, (pattern, tier)) in def.require_tier.iter().enumerate() {
            let at = || Location::RequireTier { index };
            let rank = tier_rank.get(tier).copied();
            if rank.is_none() {
                errors.push(error(
                    at(),
                    format!("`{pattern}` requires unknown tier `{tier}`"),
                    Some(unknown_help(
                        tier,
                        def.tiers.iter().map(String::as_str),
                        "tiers",
                    )),
                ));
            }
            let bits = match_patterns(std::slice::from_ref(pattern), sep, &universe, |_, e| {
                errors.push(pattern_error(at(), "tier requirement", &e));
            });
            if let Some(rank) = rank {
                for id in bits.iter() {
                    if let Some(slot) = perm_tier.get_mut(id) {
                        // Several matching patterns: the highest tier is required.
                        *slot = Some(slot.map_or(rank, |r| r.max(rank)));
                    }
                }
            }
        }
        let mut features: Vec<String> = Vec::new();
        let mut feature_index: HashMap<String, u32> = HashMap::new();
        let mut perm_features: Vec<Vec<u32>> = vec![Vec::new(); universe.len()];
        for (index, (pattern, feature)) in def.require_feature.iter().enumerate() {
            let bits = match_patterns(std::slice::from_ref(pattern), sep, &universe, |_, e| {
                errors.push(pattern_error(
                    Location::RequireFeature { index },
                    "feature requirement",
                    &e,
                ));
            });
            let fid = match feature_index.get(feature) {
                Some(&f) => f,
                None => {
                    let Ok(f) = u32::try_from(features.len()) else {
                        continue;
                    };
                    feature_index.insert(feature.clone(), f);
                    features.push(feature.clone());
                    f
                }
            };
            for id in bits.iter() {
                if let Some(list) = perm_features.get_mut(id)
                    && !list.contains(&fid)
                {
                    list.push(fid);
                }
            }
        }
        let mut mfa = BitSet::new(universe.len());
        for (index, pattern) in def.mfa.iter().enumerate() {
            let bits = match_patterns(std::slice::from_ref(pattern), sep, &universe, |_, e| {
                errors.push(pattern_error(Location::Mfa { index }, "mfa pattern", &e));
            });
            mfa.union_with(&bits);
        }

        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Policy {
            sep,
            universe: universe.into_boxed_slice(),
            ids,
            roles: roles.into_boxed_slice(),
            role_index: names,
            tiers: def.tiers.clone().into_boxed_slice(),
            tier_rank,
            features: features.into_boxed_slice(),
            feature_index,
            perm_tier: perm_tier.into_boxed_slice(),
            perm_features: perm_features
                .into_iter()
                .map(Vec::into_boxed_slice)
                .collect(),
            mfa,
            def: std::sync::Arc::new(def.clone()),
        })
    }

    /// The definitions this policy was compiled from (roles, aliases, entitlement patterns).
    pub fn definition(&self) -> &PolicyDef {
        &self.def
    }

    /// The name of a tier rank.
    pub(crate) fn tier_name(&self, rank: u32) -> Option<&str> {
        self.tiers.get(rank as usize).map(String::as_str)
    }

    /// `(full, own)` permission names a built-in role (or alias) grants, inheritance included.
    pub fn role_grants(&self, name_or_alias: &str) -> Option<(Vec<&str>, Vec<&str>)> {
        let role = self.builtin(name_or_alias)?;
        let names = |bits: &BitSet| {
            bits.iter()
                .filter_map(|i| self.universe.get(i).map(String::as_str))
                .collect()
        };
        Some((names(&role.full), names(&role.own)))
    }

    pub fn separator(&self) -> char {
        self.sep
    }

    /// The id of a concrete route permission, if it is in the universe.
    pub fn permission_id(&self, name: &str) -> Option<PermId> {
        self.ids.get(name).copied()
    }

    /// The name of a permission; `""` for an id this policy did not issue.
    pub fn permission_name(&self, id: PermId) -> &str {
        self.try_permission_name(id).unwrap_or("")
    }

    /// The name of a permission, `None` for an id this policy did not issue.
    pub fn try_permission_name(&self, id: PermId) -> Option<&str> {
        self.universe.get(id.index()).map(String::as_str)
    }

    /// Number of permissions in the universe (ids are `0..len`).
    pub fn permission_count(&self) -> usize {
        self.universe.len()
    }

    /// Role names (built-in and aliases) that exist, for validating assignments.
    pub fn has_role(&self, name_or_alias: &str) -> bool {
        self.role_index.contains_key(name_or_alias)
    }

    /// `did you mean` / valid-roles help for an unknown role name (for `config` messages).
    pub fn role_help(&self, unknown: &str) -> String {
        unknown_help(unknown, self.role_index.keys().map(String::as_str), "roles")
    }

    /// The role an alias stands for (the name itself for a role); `None` if unknown.
    pub fn resolve_role(&self, name_or_alias: &str) -> Option<&str> {
        self.role_index
            .get(name_or_alias)
            .and_then(|&i| self.roles.get(i))
            .map(|r| r.name.as_str())
    }

    /// A built-in role's `level` (informational).
    pub fn role_level(&self, name_or_alias: &str) -> Option<i64> {
        self.role_index
            .get(name_or_alias)
            .and_then(|&i| self.roles.get(i))
            .and_then(|r| r.level)
    }

    /// Tier names, lowest first.
    pub fn tiers(&self) -> &[String] {
        &self.tiers
    }

    fn builtin(&self, name: &str) -> Option<&CompiledRole> {
        self.role_index.get(name).and_then(|&i| self.roles.get(i))
    }

    /// Compile a tenant record. Problems (unknown tier, bad custom-role pattern, cycle) are
    /// returned alongside a best-effort result that never grants more than the valid data says.
    pub fn tenant(&self, data: &TenantData) -> (TenantGrants, Vec<PolicyError>) {
        let mut problems = Vec::new();
        let tier = match &data.tier {
            None => None,
            Some(t) => match self.tier_rank.get(t) {
                Some(&rank) => Some(rank),
                None => {
                    problems.push(error(
                        Location::Tenant { field: "tier" },
                        format!("unknown tier `{t}`"),
                        Some(unknown_help(
                            t,
                            self.tiers.iter().map(String::as_str),
                            "tiers",
                        )),
                    ));
                    None
                }
            },
        };
        let mut features = BitSet::new(self.features.len());
        for f in &data.features {
            // Features no pattern requires cannot change a decision; they are not errors.
            if let Some(&id) = self.feature_index.get(f) {
                features.set(id as usize);
            }
        }

        // Custom roles: a built-in role (or alias) of the same name wins; first definition wins.
        let mut accepted: Vec<&RoleDef> = Vec::new();
        let mut local_index: HashMap<&str, usize> = HashMap::new();
        for role in &data.custom_roles {
            if self.role_index.contains_key(&role.name) {
                continue;
            }
            if local_index.contains_key(role.name.as_str()) {
                problems.push(error(
                    Location::Tenant { field: "roles" },
                    format!(
                        "duplicate custom role `{}`; the first one is used",
                        role.name
                    ),
                    None,
                ));
                continue;
            }
            local_index.insert(role.name.as_str(), accepted.len());
            accepted.push(role);
        }
        let mut nodes = Vec::with_capacity(accepted.len());
        for role in &accepted {
            let mut valid = true;
            let mut compile_field = |field: &str, patterns: &[String]| {
                match_patterns(patterns, self.sep, &self.universe, |index, e| {
                    valid = false;
                    problems.push(pattern_error(
                        Location::Tenant { field: "roles" },
                        &format!("custom role `{}` {field}[{index}]", role.name),
                        &e,
                    ));
                })
            };
            let full = compile_field("permissions", &role.permissions);
            let own = compile_field("own", &role.own);
            let mut local = Vec::new();
            let mut external = Vec::new();
            for (index, parent) in role.inherits.iter().enumerate() {
                if let Some(b) = self.builtin(parent) {
                    external.push(b);
                } else if let Some(&p) = local_index.get(parent.as_str()) {
                    local.push((index, p));
                } else {
                    valid = false;
                    problems.push(error(
                        Location::Tenant { field: "roles" },
                        format!(
                            "custom role `{}` inherits unknown role `{parent}`",
                            role.name
                        ),
                        Some(unknown_help(
                            parent,
                            self.role_index
                                .keys()
                                .map(String::as_str)
                                .chain(local_index.keys().copied()),
                            "roles",
                        )),
                    ));
                }
            }
            nodes.push(RoleNode {
                def: role,
                full,
                own,
                local,
                external,
                valid,
            });
        }
        let (roles, cycles) = flatten(&mut nodes);
        for cycle in &cycles {
            let mut e = cycle_error(&nodes, cycle, |_, _| Location::Tenant { field: "roles" });
            e.message = format!("custom {}; these roles grant nothing", e.message);
            problems.push(e);
        }
        let role_index = roles
            .iter()
            .enumerate()
            .map(|(i, r)| (r.name.clone(), i))
            .collect();
        let custom_defs = accepted.into_iter().cloned().collect();
        (
            TenantGrants {
                tier,
                features,
                roles,
                role_index,
                custom_defs,
                data_tier: data.tier.clone(),
                data_features: data.features.clone(),
            },
            problems,
        )
    }

    /// Compile a principal. An unknown role grants nothing (reported); a malformed `deny`
    /// pattern makes the whole principal grant nothing (a skipped deny would widen access).
    pub fn principal(
        &self,
        tenant: &TenantGrants,
        subject: &SubjectData,
    ) -> (PrincipalGrants, Vec<PolicyError>) {
        let mut problems = Vec::new();
        let n = self.universe.len();

        let mut deny_ok = true;
        let deny = match_patterns(&subject.deny, self.sep, &self.universe, |index, e| {
            deny_ok = false;
            let mut err = pattern_error(
                Location::Subject {
                    field: "deny",
                    index,
                },
                "deny",
                &e,
            );
            err.message
                .push_str("; the principal is granted nothing until it is fixed");
            problems.push(err);
        });
        if !deny_ok {
            let voided = PrincipalGrants {
                source: subject.clone(),
                ..PrincipalGrants::default()
            };
            return (voided, problems);
        }

        let mut p = PrincipalGrants {
            full: BitSet::new(n),
            own: BitSet::new(n),
            scope_free_full: BitSet::new(n),
            scope_free_own: BitSet::new(n),
            deny,
            scopes: subject.scopes.clone().into_boxed_slice(),
            role_names: Arc::default(),
            source: subject.clone(),
        };
        let mut role_names: Vec<String> = Vec::new();
        for (index, name) in subject.roles.iter().enumerate() {
            let role = self.builtin(name).or_else(|| {
                tenant
                    .role_index
                    .get(name)
                    .and_then(|&i| tenant.roles.get(i))
            });
            let Some(role) = role else {
                problems.push(error(
                    Location::Subject {
                        field: "roles",
                        index,
                    },
                    format!("unknown role `{name}` grants nothing"),
                    Some(unknown_help(
                        name,
                        self.role_index
                            .keys()
                            .chain(tenant.role_index.keys())
                            .map(String::as_str),
                        "roles",
                    )),
                ));
                continue;
            };
            p.full.union_with(&role.full);
            p.own.union_with(&role.own);
            if role.all_scopes {
                p.scope_free_full.union_with(&role.full);
                p.scope_free_own.union_with(&role.own);
            }
            if !role_names.contains(&role.name) {
                role_names.push(role.name.clone());
            }
        }
        p.role_names = role_names.into();
        let grants = match_patterns(&subject.grant, self.sep, &self.universe, |index, e| {
            let mut err = pattern_error(
                Location::Subject {
                    field: "grant",
                    index,
                },
                "grant",
                &e,
            );
            err.message.push_str("; skipped");
            problems.push(err);
        });
        p.full.union_with(&grants);
        (p, problems)
    }

    /// What a principal may do on each universe permission, ignoring entitlements, owner and
    /// scope (for `/.well-known/portcullis/me`): `(name, own_only)` for every held, undenied one.
    pub fn held_permissions<'a>(
        &'a self,
        principal: &'a PrincipalGrants,
    ) -> impl Iterator<Item = (&'a str, bool)> + 'a {
        self.universe.iter().enumerate().filter_map(|(i, name)| {
            let full = principal.full.get(i);
            let own = principal.own.get(i);
            ((full || own) && !principal.deny.get(i)).then_some((name.as_str(), !full))
        })
    }
}
