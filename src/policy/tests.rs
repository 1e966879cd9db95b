//! Unit tests: the permission grammar, compilation errors, role expansion, tenants, principals
//! and every decision rule of DESIGN.md §3.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests fail loudly on purpose"
)]

use super::permission::validate_name;
use super::*;

// === helpers ===

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| (*x).to_owned()).collect()
}

fn role(name: &str, permissions: &[&str]) -> RoleDef {
    RoleDef {
        name: name.to_owned(),
        permissions: s(permissions),
        ..RoleDef::default()
    }
}

fn pat(p: &str) -> Pattern {
    Pattern::parse(p, '.').unwrap()
}

const UNIVERSE: &[&str] = &[
    "campaigns.view",
    "campaigns.delete",
    "content.create",
    "content.edit",
    "preferences.edit",
    "email.campaigns.send",
    "email.lists.view",
    "quality.reports.view",
    "quality.reports.export",
    "billing.invoices.view",
    "security.keys.rotate",
    "contacts.view",
    "contacts.delete",
    "a.b.view",
];

/// The DESIGN.md §8 example, extended with a few roles the tests need.
fn base_def() -> PolicyDef {
    let editor = RoleDef {
        name: "editor".into(),
        permissions: s(&["content.create", "content.edit"]),
        own: s(&["preferences.edit"]),
        inherits: s(&["viewer"]),
        level: Some(20),
        ..RoleDef::default()
    };
    let owner = RoleDef {
        all_scopes: true,
        level: Some(100),
        ..role("owner", &["*"])
    };
    let contributor = RoleDef {
        own: s(&["campaigns.delete", "contacts.*"]),
        ..role("contributor", &["campaigns.view"])
    };
    let auditor = RoleDef {
        all_scopes: true,
        ..role("auditor", &["campaigns.view"])
    };
    let own_all = RoleDef {
        all_scopes: true,
        own: s(&["contacts.delete"]),
        ..role("own_all", &[])
    };
    PolicyDef {
        separator: '.',
        roles: vec![
            role("viewer", &["*.view"]),
            editor,
            owner,
            contributor,
            auditor,
            own_all,
            role("deleter", &["campaigns.delete", "contacts.delete"]),
            role("mailer", &["email.*"]),
            role("quality", &["quality.*"]),
            role("billing", &["billing.*", "security.*"]),
            // Inherits through an alias.
            RoleDef {
                inherits: s(&["member"]),
                ..role("senior", &["campaigns.delete"])
            },
            // Inherits an all_scopes role.
            RoleDef {
                inherits: s(&["owner"]),
                ..role("co_owner", &[])
            },
        ],
        aliases: vec![("member".into(), "editor".into())],
        tiers: s(&["starter", "growth", "enterprise"]),
        require_tier: vec![
            ("email.*".into(), "growth".into()),
            ("email.campaigns.*".into(), "enterprise".into()),
            ("*.send".into(), "starter".into()),
        ],
        require_feature: vec![
            ("quality.*".into(), "quality".into()),
            ("quality.reports.export".into(), "exports".into()),
        ],
        mfa: s(&["billing.*", "security.*"]),
        route_permissions: s(UNIVERSE),
    }
}

struct Fx {
    policy: Policy,
}

impl Fx {
    fn new() -> Fx {
        Fx::with(base_def())
    }

    fn with(def: PolicyDef) -> Fx {
        Fx {
            policy: Policy::compile(&def).unwrap(),
        }
    }

    fn id(&self, name: &str) -> PermId {
        self.policy.permission_id(name).unwrap()
    }

    fn tenant(&self, tier: Option<&str>, features: &[&str]) -> TenantGrants {
        let (t, problems) = self.policy.tenant(&TenantData {
            tier: tier.map(str::to_owned),
            features: s(features),
            custom_roles: Vec::new(),
        });
        assert_eq!(problems, vec![]);
        t
    }

    /// A tenant with every entitlement, so tests of other rules are not gated.
    fn rich(&self) -> TenantGrants {
        self.tenant(Some("enterprise"), &["quality", "exports"])
    }

    fn who(&self, tenant: &TenantGrants, subject: SubjectData) -> PrincipalGrants {
        let (p, problems) = self.policy.principal(tenant, &subject);
        assert_eq!(problems, vec![]);
        p
    }

    fn roles(&self, tenant: &TenantGrants, roles: &[&str]) -> PrincipalGrants {
        self.who(
            tenant,
            SubjectData {
                roles: s(roles),
                ..SubjectData::default()
            },
        )
    }

    fn rule(&self, requirement: Requirement) -> Rule {
        Rule {
            requirement,
            has_owner: false,
            has_scope: false,
            mfa: false,
            mode: Mode::Enforce,
        }
    }

    fn one(&self, name: &str) -> Rule {
        self.rule(Requirement::Permission(self.id(name)))
    }

    fn any(&self, names: &[&str]) -> Rule {
        self.rule(Requirement::AnyOf(
            names.iter().map(|n| self.id(n)).collect(),
        ))
    }

    fn all(&self, names: &[&str]) -> Rule {
        self.rule(Requirement::AllOf(
            names.iter().map(|n| self.id(n)).collect(),
        ))
    }

    fn decide(
        &self,
        rule: &Rule,
        caller: &Caller<'_>,
        t: &TenantGrants,
        p: &PrincipalGrants,
    ) -> Verdict {
        decide(&self.policy, rule, Some((caller, t, p)))
    }

    fn outcome(
        &self,
        rule: &Rule,
        caller: &Caller<'_>,
        t: &TenantGrants,
        p: &PrincipalGrants,
    ) -> Outcome {
        self.decide(rule, caller, t, p).outcome
    }

    /// Assert an allow relying on `perm`, and return `own_only`.
    fn assert_allow(&self, o: &Outcome, perm: &str) -> bool {
        match o {
            Outcome::Allow {
                own_only,
                relied_on,
            } => {
                assert_eq!(
                    relied_on.map(|id| self.policy.permission_name(id)),
                    Some(perm),
                    "relied-on permission"
                );
                *own_only
            }
            Outcome::Deny(d) => panic!(
                "expected allow on {perm}, got {} on {:?}",
                d.reason,
                d.permission.map(|id| self.policy.permission_name(id))
            ),
        }
    }

    fn assert_deny(&self, o: &Outcome, reason: Reason, perm: &str) -> Denial {
        match o {
            Outcome::Deny(d) => {
                assert_eq!(d.reason, reason);
                assert_eq!(
                    d.permission.map(|id| self.policy.permission_name(id)),
                    Some(perm),
                    "required permission"
                );
                d.clone()
            }
            Outcome::Allow { .. } => panic!("expected {reason} on {perm}, got allow"),
        }
    }
}

fn caller(subject: &str) -> Caller<'_> {
    Caller {
        subject,
        mfa: false,
        owner: None,
        scope: None,
    }
}

fn compile_errors(def: &PolicyDef) -> Vec<PolicyError> {
    match Policy::compile(def) {
        Ok(_) => panic!("expected compile errors"),
        Err(e) => e,
    }
}

// === permission grammar ===

#[test]
fn exact_patterns_match_only_themselves() {
    let p = pat("campaigns.view");
    assert!(p.matches("campaigns.view"));
    assert!(!p.matches("campaigns.views"));
    assert!(!p.matches("campaigns"));
    assert!(!p.matches("campaigns.view.all"));
    assert!(!p.is_wildcard());
}

#[test]
fn matching_is_case_sensitive() {
    assert!(!pat("campaigns.view").matches("Campaigns.view"));
    assert!(!pat("*.view").matches("contacts.VIEW"));
}

#[test]
fn trailing_star_matches_one_or_more_segments() {
    let p = pat("email.*");
    assert!(p.matches("email.send"));
    assert!(p.matches("email.campaigns.send"));
    assert!(p.matches("email.a.b.c.d"));
    assert!(!p.matches("email"));
    assert!(!p.matches("emails.send"));
    assert!(p.is_wildcard());
}

#[test]
fn leading_star_matches_exactly_one_segment() {
    let p = pat("*.view");
    assert!(p.matches("contacts.view"));
    assert!(!p.matches("a.b.view"));
    assert!(!p.matches("view"));
    assert!(!p.matches("contacts.edit"));
}

#[test]
fn middle_star_matches_exactly_one_segment() {
    let p = pat("email.*.send");
    assert!(p.matches("email.campaigns.send"));
    assert!(!p.matches("email.send"));
    assert!(!p.matches("email.a.b.send"));
    assert!(!p.matches("email.campaigns.view"));
}

#[test]
fn lone_star_matches_everything() {
    let p = pat("*");
    for name in UNIVERSE {
        assert!(p.matches(name), "{name}");
    }
    assert!(p.matches("x"));
}

#[test]
fn several_stars() {
    let p = pat("*.*");
    assert!(!p.matches("a"));
    assert!(p.matches("a.b"));
    assert!(p.matches("a.b.c"));
    let p = pat("*.b.*");
    assert!(p.matches("a.b.c"));
    assert!(p.matches("a.b.c.d"));
    assert!(!p.matches("a.c.c"));
    assert!(!p.matches("a.x.b.c"));
}

#[test]
fn matches_rejects_names_with_empty_segments() {
    assert!(!pat("*").matches(""));
    assert!(!pat("a.*").matches("a."));
    assert!(!pat("a.*").matches("a.b..c"));
    assert!(!pat("*.view").matches(".view"));
}

#[test]
fn underscore_separator() {
    let p = Pattern::parse("payment_*", '_').unwrap();
    assert!(p.matches("payment_methods_view"));
    assert!(!p.matches("payment"));
    let p = Pattern::parse("*_view", '_').unwrap();
    assert!(p.matches("contacts_view"));
    // `payment_methods_view` has three segments with `_`.
    assert!(!p.matches("payment_methods_view"));
    let p = Pattern::parse("payment_*_view", '_').unwrap();
    assert!(p.matches("payment_methods_view"));
    assert_eq!(p.separator(), '_');
    // `.` is not a name character when `_` separates.
    assert!(matches!(
        Pattern::parse("contacts.view", '_'),
        Err(PatternError::InvalidChar { ch: '.', .. })
    ));
    // With `.` as separator, `_` is an ordinary character.
    assert!(pat("payment_methods.*").matches("payment_methods.view"));
}

#[test]
fn colon_and_dash_are_name_characters() {
    assert!(pat("svc:billing.read-only").matches("svc:billing.read-only"));
    let p = Pattern::parse("svc:*", ':').unwrap();
    assert!(p.matches("svc:orders:read"));
    assert!(matches!(
        Pattern::parse("a.b", ':'),
        Err(PatternError::InvalidChar { ch: '.', .. })
    ));
}

#[test]
fn bad_patterns() {
    assert_eq!(Pattern::parse("", '.'), Err(PatternError::Empty));
    for bad in ["a..b", ".a", "a.", "."] {
        assert!(
            matches!(
                Pattern::parse(bad, '.'),
                Err(PatternError::EmptySegment { .. })
            ),
            "{bad}"
        );
    }
    for (bad, seg) in [
        ("camp*", "camp*"),
        ("*a", "*a"),
        ("a.b*", "b*"),
        ("a.**", "**"),
    ] {
        assert_eq!(
            Pattern::parse(bad, '.'),
            Err(PatternError::PartialWildcard {
                input: bad.into(),
                segment: seg.into()
            }),
        );
    }
    for (bad, ch) in [("a b", ' '), ("a/b", '/'), ("é.view", 'é'), ("a.b?", '?')] {
        assert_eq!(
            Pattern::parse(bad, '.'),
            Err(PatternError::InvalidChar {
                input: bad.into(),
                ch,
                sep: '.'
            })
        );
    }
}

#[test]
fn pattern_error_messages_quote_input_and_help() {
    let e = Pattern::parse("camp*", '.').unwrap_err();
    assert_eq!(
        e.to_string(),
        "`*` must be a whole segment, found `camp*` in `camp*`"
    );
    assert!(e.help().contains("own segment"));
    let e = Pattern::parse("a..b", '.').unwrap_err();
    assert_eq!(e.to_string(), "empty segment in `a..b`");
}

#[test]
fn concrete_names_reject_wildcards() {
    assert_eq!(validate_name("campaigns.view", '.'), Ok(()));
    assert_eq!(
        validate_name("campaigns.*", '.'),
        Err(PatternError::Wildcard {
            input: "campaigns.*".into()
        })
    );
    assert!(validate_name("camp*", '.').is_err());
    assert!(validate_name("", '.').is_err());
}

#[test]
fn pattern_display_round_trips() {
    assert_eq!(pat("email.*").to_string(), "email.*");
    assert_eq!(pat("email.*").as_str(), "email.*");
}

// === compile ===

#[test]
fn default_def_uses_dot_separator() {
    assert_eq!(PolicyDef::default().separator, '.');
    let p = Policy::compile(&PolicyDef::default()).unwrap();
    assert_eq!(p.separator(), '.');
    assert_eq!(p.permission_count(), 0);
}

#[test]
fn universe_is_deduplicated() {
    let def = PolicyDef {
        route_permissions: s(&["a.view", "b.view", "a.view"]),
        ..PolicyDef::default()
    };
    let p = Policy::compile(&def).unwrap();
    assert_eq!(p.permission_count(), 2);
    let a = p.permission_id("a.view").unwrap();
    assert_eq!(p.permission_name(a), "a.view");
    assert_eq!(p.permission_id("c.view"), None);
    assert_eq!(p.permission_name(PermId(99)), "");
    assert_eq!(p.try_permission_name(PermId(99)), None);
}

#[test]
fn route_permissions_must_be_concrete() {
    let def = PolicyDef {
        route_permissions: s(&["a.view", "a.*", "camp*"]),
        ..PolicyDef::default()
    };
    let errors = compile_errors(&def);
    assert_eq!(errors.len(), 2);
    assert_eq!(errors[0].at, Location::RoutePermission { index: 1 });
    assert!(errors[0].message.contains("`a.*`"), "{}", errors[0].message);
    assert!(
        errors[0]
            .help
            .as_deref()
            .unwrap()
            .contains("exact permission")
    );
    assert_eq!(errors[1].at, Location::RoutePermission { index: 2 });
}

#[test]
fn bad_role_patterns_are_located() {
    let mut def = base_def();
    def.roles[1].own = s(&["preferences.edit", "pref*"]);
    def.roles[0].permissions = s(&["*.view", "a..b"]);
    let errors = compile_errors(&def);
    let at: Vec<_> = errors.iter().map(|e| e.at.clone()).collect();
    assert_eq!(
        at,
        vec![
            Location::Role {
                role: "viewer".into(),
                field: "permissions",
                index: 1
            },
            Location::Role {
                role: "editor".into(),
                field: "own",
                index: 1
            },
        ]
    );
    assert!(errors[1].message.contains("`pref*`"));
    assert!(errors.iter().all(|e| e.help.is_some()));
}

#[test]
fn unknown_inherited_role_suggests_or_lists() {
    let mut def = base_def();
    def.roles.push(RoleDef {
        inherits: s(&["viewr"]),
        ..role("x", &[])
    });
    let errors = compile_errors(&def);
    assert_eq!(errors.len(), 1);
    assert_eq!(
        errors[0].at,
        Location::Role {
            role: "x".into(),
            field: "inherits",
            index: 0
        }
    );
    assert_eq!(errors[0].message, "role `x` inherits unknown role `viewr`");
    assert_eq!(errors[0].help.as_deref(), Some("did you mean `viewer`?"));

    let def = PolicyDef {
        roles: vec![
            role("alpha", &[]),
            RoleDef {
                inherits: s(&["zzzzzz"]),
                ..role("beta", &[])
            },
        ],
        ..PolicyDef::default()
    };
    let errors = compile_errors(&def);
    assert_eq!(
        errors[0].help.as_deref(),
        Some("valid roles: `alpha`, `beta`")
    );
}

#[test]
fn inheritance_cycles_are_errors_naming_the_cycle() {
    let def = PolicyDef {
        roles: vec![
            RoleDef {
                inherits: s(&["b"]),
                ..role("a", &[])
            },
            RoleDef {
                inherits: s(&["c"]),
                ..role("b", &[])
            },
            RoleDef {
                inherits: s(&["a"]),
                ..role("c", &[])
            },
            RoleDef {
                inherits: s(&["a"]),
                ..role("d", &[])
            },
        ],
        ..PolicyDef::default()
    };
    let errors = compile_errors(&def);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(
        errors[0].message,
        "role inheritance cycle: `a` -> `b` -> `c` -> `a`"
    );
    assert_eq!(
        errors[0].at,
        Location::Role {
            role: "a".into(),
            field: "inherits",
            index: 0
        }
    );
}

#[test]
fn self_inheritance_is_a_cycle() {
    let def = PolicyDef {
        roles: vec![
            RoleDef {
                inherits: s(&["x", "a"]),
                ..role("a", &[])
            },
            role("x", &[]),
        ],
        ..PolicyDef::default()
    };
    let errors = compile_errors(&def);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].message, "role inheritance cycle: `a` -> `a`");
    assert_eq!(
        errors[0].at,
        Location::Role {
            role: "a".into(),
            field: "inherits",
            index: 1
        }
    );
}

#[test]
fn cycle_through_alias_is_detected() {
    let def = PolicyDef {
        roles: vec![
            RoleDef {
                inherits: s(&["legacy_b"]),
                ..role("a", &[])
            },
            RoleDef {
                inherits: s(&["a"]),
                ..role("b", &[])
            },
        ],
        aliases: vec![("legacy_b".into(), "b".into())],
        ..PolicyDef::default()
    };
    let errors = compile_errors(&def);
    assert_eq!(errors.len(), 1);
    assert_eq!(
        errors[0].message,
        "role inheritance cycle: `a` -> `b` -> `a`"
    );
}

#[test]
fn alias_equal_to_role_is_an_error() {
    let mut def = base_def();
    def.aliases.push(("viewer".into(), "editor".into()));
    let errors = compile_errors(&def);
    assert_eq!(errors.len(), 1);
    assert_eq!(
        errors[0].at,
        Location::Alias {
            alias: "viewer".into()
        }
    );
    assert_eq!(errors[0].message, "alias `viewer` has the name of a role");
}

#[test]
fn alias_to_unknown_role_is_an_error() {
    let mut def = base_def();
    def.aliases.push(("staff".into(), "editr".into()));
    let errors = compile_errors(&def);
    assert_eq!(errors.len(), 1);
    assert_eq!(
        errors[0].message,
        "alias `staff` names unknown role `editr`"
    );
    assert_eq!(errors[0].help.as_deref(), Some("did you mean `editor`?"));
}

#[test]
fn aliases_are_one_level() {
    let mut def = base_def();
    def.aliases.push(("legacy".into(), "member".into()));
    let errors = compile_errors(&def);
    assert_eq!(errors.len(), 1);
    assert_eq!(
        errors[0].at,
        Location::Alias {
            alias: "legacy".into()
        }
    );
    assert!(errors[0].help.as_deref().unwrap().contains("one level"));
}

#[test]
fn duplicate_roles_are_errors() {
    let mut def = base_def();
    def.roles.push(role("viewer", &[]));
    let errors = compile_errors(&def);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].message, "duplicate role `viewer`");
}

#[test]
fn entitlement_errors_are_located() {
    let mut def = base_def();
    def.require_tier.push(("email.*".into(), "groth".into()));
    def.require_tier.push(("email*".into(), "growth".into()));
    def.require_feature.push(("a..b".into(), "f".into()));
    def.mfa.push("bill*".into());
    let errors = compile_errors(&def);
    let at: Vec<_> = errors.iter().map(|e| e.at.clone()).collect();
    assert_eq!(
        at,
        vec![
            Location::RequireTier { index: 3 },
            Location::RequireTier { index: 4 },
            Location::RequireFeature { index: 2 },
            Location::Mfa { index: 2 },
        ]
    );
    assert_eq!(errors[0].message, "`email.*` requires unknown tier `groth`");
    assert_eq!(errors[0].help.as_deref(), Some("did you mean `growth`?"));
}

#[test]
fn all_errors_are_reported_at_once() {
    let mut def = base_def();
    def.route_permissions.push("x.*".into());
    def.roles[0].permissions.push("v*".into());
    def.aliases.push(("owner".into(), "viewer".into()));
    def.require_tier.push(("x.y".into(), "gold".into()));
    assert_eq!(compile_errors(&def).len(), 4);
}

#[test]
fn error_messages_are_lowercase_without_period() {
    let mut def = base_def();
    def.route_permissions.push("x.*".into());
    def.roles[0].permissions.push("v*".into());
    def.roles[0].inherits.push("nobody".into());
    def.aliases.push(("owner".into(), "viewer".into()));
    for e in compile_errors(&def) {
        let first = e.message.chars().next().unwrap();
        assert!(!first.is_uppercase(), "{}", e.message);
        assert!(!e.message.ends_with('.'), "{}", e.message);
        assert_eq!(e.to_string(), e.message);
    }
}

#[test]
fn role_lookup_helpers() {
    let fx = Fx::new();
    assert!(fx.policy.has_role("viewer"));
    assert!(fx.policy.has_role("member"));
    assert!(!fx.policy.has_role("Viewer"));
    assert_eq!(fx.policy.resolve_role("member"), Some("editor"));
    assert_eq!(fx.policy.resolve_role("nobody"), None);
    assert_eq!(fx.policy.role_level("owner"), Some(100));
    assert_eq!(fx.policy.role_level("viewer"), None);
    assert_eq!(fx.policy.role_help("ownr"), "did you mean `owner`?");
    assert_eq!(
        fx.policy.tiers(),
        &s(&["starter", "growth", "enterprise"])[..]
    );
}

// === roles and inheritance ===

#[test]
fn inheritance_grants_parent_permissions() {
    let fx = Fx::new();
    let t = fx.rich();
    let p = fx.roles(&t, &["editor"]);
    let c = caller("u1");
    // Own grant plus inherited `*.view`.
    fx.assert_allow(
        &fx.outcome(&fx.one("contacts.view"), &c, &t, &p),
        "contacts.view",
    );
    fx.assert_allow(
        &fx.outcome(&fx.one("content.edit"), &c, &t, &p),
        "content.edit",
    );
    fx.assert_deny(
        &fx.outcome(&fx.one("campaigns.delete"), &c, &t, &p),
        Reason::MissingPermission,
        "campaigns.delete",
    );
}

#[test]
fn inheritance_is_transitive_and_through_aliases() {
    let fx = Fx::new();
    let t = fx.rich();
    // senior -> member (= editor) -> viewer
    let p = fx.roles(&t, &["senior"]);
    let c = caller("u1");
    for perm in ["campaigns.delete", "content.create", "campaigns.view"] {
        fx.assert_allow(&fx.outcome(&fx.one(perm), &c, &t, &p), perm);
    }
    // `own` is inherited too.
    assert!(fx.assert_allow(
        &fx.outcome(&fx.one("preferences.edit"), &c, &t, &p),
        "preferences.edit"
    ));
}

#[test]
fn level_grants_nothing() {
    let def = PolicyDef {
        roles: vec![RoleDef {
            level: Some(1000),
            ..role("boss", &[])
        }],
        route_permissions: s(&["a.view"]),
        ..PolicyDef::default()
    };
    let fx = Fx::with(def);
    let t = TenantGrants::default();
    let p = fx.roles(&t, &["boss"]);
    fx.assert_deny(
        &fx.outcome(&fx.one("a.view"), &caller("u"), &t, &p),
        Reason::MissingPermission,
        "a.view",
    );
}

#[test]
fn roles_union() {
    let fx = Fx::new();
    let t = fx.rich();
    let p = fx.roles(&t, &["viewer", "deleter"]);
    let c = caller("u");
    fx.assert_allow(
        &fx.outcome(&fx.one("campaigns.view"), &c, &t, &p),
        "campaigns.view",
    );
    fx.assert_allow(
        &fx.outcome(&fx.one("campaigns.delete"), &c, &t, &p),
        "campaigns.delete",
    );
}

// === principals ===

#[test]
fn alias_assignments_record_the_effective_role() {
    let fx = Fx::new();
    let t = fx.rich();
    let p = fx.roles(&t, &["member", "viewer", "editor"]);
    assert_eq!(p.role_names(), &s(&["editor", "viewer"])[..]);
    fx.assert_allow(
        &fx.outcome(&fx.one("content.edit"), &caller("u"), &t, &p),
        "content.edit",
    );
}

#[test]
fn unknown_role_grants_nothing_but_others_apply() {
    let fx = Fx::new();
    let t = fx.rich();
    let (p, problems) = fx.policy.principal(
        &t,
        &SubjectData {
            roles: s(&["ghost", "viewer"]),
            ..SubjectData::default()
        },
    );
    assert_eq!(problems.len(), 1);
    assert_eq!(
        problems[0].at,
        Location::Subject {
            field: "roles",
            index: 0
        }
    );
    assert_eq!(problems[0].message, "unknown role `ghost` grants nothing");
    assert_eq!(p.role_names(), &s(&["viewer"])[..]);
    let c = caller("u");
    fx.assert_allow(
        &fx.outcome(&fx.one("campaigns.view"), &c, &t, &p),
        "campaigns.view",
    );
}

#[test]
fn subject_without_assignment_has_no_roles() {
    let fx = Fx::new();
    let t = fx.rich();
    let p = fx.who(&t, SubjectData::default());
    assert!(p.role_names().is_empty());
    fx.assert_deny(
        &fx.outcome(&fx.one("campaigns.view"), &caller("u"), &t, &p),
        Reason::MissingPermission,
        "campaigns.view",
    );
}

#[test]
fn per_user_grants_are_full_grants() {
    let fx = Fx::new();
    let t = fx.rich();
    let p = fx.who(
        &t,
        SubjectData {
            grant: s(&["contacts.*"]),
            ..SubjectData::default()
        },
    );
    let c = caller("u");
    assert!(!fx.assert_allow(
        &fx.outcome(&fx.one("contacts.delete"), &c, &t, &p),
        "contacts.delete"
    ));
    fx.assert_deny(
        &fx.outcome(&fx.one("campaigns.view"), &c, &t, &p),
        Reason::MissingPermission,
        "campaigns.view",
    );
}

#[test]
fn malformed_grant_is_skipped_and_reported() {
    let fx = Fx::new();
    let t = fx.rich();
    let (p, problems) = fx.policy.principal(
        &t,
        &SubjectData {
            grant: s(&["camp*", "campaigns.delete"]),
            ..SubjectData::default()
        },
    );
    assert_eq!(problems.len(), 1);
    assert_eq!(
        problems[0].at,
        Location::Subject {
            field: "grant",
            index: 0
        }
    );
    let c = caller("u");
    fx.assert_allow(
        &fx.outcome(&fx.one("campaigns.delete"), &c, &t, &p),
        "campaigns.delete",
    );
    fx.assert_deny(
        &fx.outcome(&fx.one("campaigns.view"), &c, &t, &p),
        Reason::MissingPermission,
        "campaigns.view",
    );
}

#[test]
fn malformed_deny_voids_the_principal() {
    let fx = Fx::new();
    let t = fx.rich();
    let (p, problems) = fx.policy.principal(
        &t,
        &SubjectData {
            roles: s(&["owner"]),
            grant: s(&["*"]),
            deny: s(&["campaigns.delete", "contacts.del*"]),
            scopes: Vec::new(),
        },
    );
    assert_eq!(problems.len(), 1);
    assert_eq!(
        problems[0].at,
        Location::Subject {
            field: "deny",
            index: 1
        }
    );
    assert!(problems[0].message.contains("granted nothing"));
    assert!(p.role_names().is_empty());
    for perm in UNIVERSE {
        fx.assert_deny(
            &fx.outcome(&fx.one(perm), &caller("u"), &t, &p),
            Reason::MissingPermission,
            perm,
        );
    }
}

#[test]
fn deny_beats_roles_grants_and_own() {
    let fx = Fx::new();
    let t = fx.rich();
    let p = fx.who(
        &t,
        SubjectData {
            roles: s(&["owner", "contributor"]),
            grant: s(&["campaigns.delete"]),
            deny: s(&["campaigns.delete", "contacts.*"]),
            scopes: Vec::new(),
        },
    );
    let me = Caller {
        owner: Some("u"),
        ..caller("u")
    };
    let mut r = fx.one("campaigns.delete");
    r.has_owner = true;
    fx.assert_deny(
        &fx.outcome(&r, &me, &t, &p),
        Reason::DeniedByOverride,
        "campaigns.delete",
    );
    // `contacts.*` is granted only through `own` by contributor and fully by owner.
    fx.assert_deny(
        &fx.outcome(&fx.one("contacts.delete"), &me, &t, &p),
        Reason::DeniedByOverride,
        "contacts.delete",
    );
    fx.assert_allow(
        &fx.outcome(&fx.one("campaigns.view"), &me, &t, &p),
        "campaigns.view",
    );

    // Deny beats an own-only grant as well.
    let p = fx.who(
        &t,
        SubjectData {
            roles: s(&["contributor"]),
            deny: s(&["contacts.delete"]),
            ..SubjectData::default()
        },
    );
    fx.assert_deny(
        &fx.outcome(&fx.one("contacts.delete"), &me, &t, &p),
        Reason::DeniedByOverride,
        "contacts.delete",
    );
}

#[test]
fn deny_on_unheld_permission_reports_override() {
    // `denied_by_override` comes before `missing_permission`.
    let fx = Fx::new();
    let t = fx.rich();
    let p = fx.who(
        &t,
        SubjectData {
            deny: s(&["campaigns.delete"]),
            ..SubjectData::default()
        },
    );
    fx.assert_deny(
        &fx.outcome(&fx.one("campaigns.delete"), &caller("u"), &t, &p),
        Reason::DeniedByOverride,
        "campaigns.delete",
    );
}

#[test]
fn held_permissions_lists_undenied_grants() {
    let fx = Fx::new();
    let t = fx.rich();
    let p = fx.who(
        &t,
        SubjectData {
            roles: s(&["contributor"]),
            deny: s(&["contacts.view"]),
            ..SubjectData::default()
        },
    );
    let held: Vec<_> = fx.policy.held_permissions(&p).collect();
    assert_eq!(
        held,
        vec![
            ("campaigns.view", false),
            ("campaigns.delete", true),
            ("contacts.delete", true)
        ]
    );
}

// === tenants ===

#[test]
fn unknown_tier_is_reported_and_means_no_tier() {
    let fx = Fx::new();
    let (t, problems) = fx.policy.tenant(&TenantData {
        tier: Some("growht".into()),
        ..TenantData::default()
    });
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].at, Location::Tenant { field: "tier" });
    assert_eq!(problems[0].message, "unknown tier `growht`");
    assert_eq!(problems[0].help.as_deref(), Some("did you mean `growth`?"));
    let p = fx.roles(&t, &["mailer"]);
    let d = fx.assert_deny(
        &fx.outcome(&fx.one("email.lists.view"), &caller("u"), &t, &p),
        Reason::TierRequired,
        "email.lists.view",
    );
    assert_eq!(d.required_tier.as_deref(), Some("growth"));
}

#[test]
fn tenant_without_record_or_tier_fails_entitlements() {
    let fx = Fx::new();
    let none = TenantGrants::default();
    let no_tier = fx.tenant(None, &["quality", "exports"]);
    for t in [&none, &no_tier] {
        let p = fx.roles(t, &["owner"]);
        let d = fx.assert_deny(
            &fx.outcome(&fx.one("email.lists.view"), &caller("u"), t, &p),
            Reason::TierRequired,
            "email.lists.view",
        );
        assert_eq!(d.required_tier.as_deref(), Some("growth"));
    }
    let p = fx.roles(&none, &["owner"]);
    let d = fx.assert_deny(
        &fx.outcome(&fx.one("quality.reports.view"), &caller("u"), &none, &p),
        Reason::FeatureDisabled,
        "quality.reports.view",
    );
    assert_eq!(d.required_feature.as_deref(), Some("quality"));
    // Ungated permissions still work for a tenant with no record.
    fx.assert_allow(
        &fx.outcome(&fx.one("campaigns.view"), &caller("u"), &none, &p),
        "campaigns.view",
    );
}

fn custom(name: &str, permissions: &[&str], own: &[&str], inherits: &[&str]) -> RoleDef {
    RoleDef {
        name: name.into(),
        permissions: s(permissions),
        own: s(own),
        inherits: s(inherits),
        ..RoleDef::default()
    }
}

#[test]
fn custom_roles_inherit_builtin_and_custom_roles() {
    let fx = Fx::new();
    let (t, problems) = fx.policy.tenant(&TenantData {
        tier: Some("enterprise".into()),
        features: Vec::new(),
        custom_roles: vec![
            custom("lead", &["campaigns.delete"], &[], &["agent"]),
            custom("agent", &[], &["contacts.delete"], &["member"]),
        ],
    });
    assert_eq!(problems, vec![]);
    let p = fx.roles(&t, &["lead"]);
    assert_eq!(p.role_names(), &s(&["lead"])[..]);
    let c = caller("u");
    for perm in ["campaigns.delete", "content.edit", "campaigns.view"] {
        assert!(!fx.assert_allow(&fx.outcome(&fx.one(perm), &c, &t, &p), perm));
    }
    assert!(fx.assert_allow(
        &fx.outcome(&fx.one("contacts.delete"), &c, &t, &p),
        "contacts.delete"
    ));
}

#[test]
fn builtin_role_wins_over_custom_role_of_same_name() {
    let fx = Fx::new();
    let (t, problems) = fx.policy.tenant(&TenantData {
        custom_roles: vec![
            custom("viewer", &["*"], &[], &[]),
            custom("member", &["*"], &[], &[]),
        ],
        ..TenantData::default()
    });
    assert_eq!(problems, vec![]);
    let p = fx.roles(&t, &["viewer", "member"]);
    assert_eq!(p.role_names(), &s(&["viewer", "editor"])[..]);
    fx.assert_deny(
        &fx.outcome(&fx.one("campaigns.delete"), &caller("u"), &t, &p),
        Reason::MissingPermission,
        "campaigns.delete",
    );
}

#[test]
fn bad_custom_role_grants_nothing() {
    let fx = Fx::new();
    let (t, problems) = fx.policy.tenant(&TenantData {
        custom_roles: vec![
            custom("broken", &["campaigns.delete", "con*"], &[], &[]),
            custom("orphan", &["campaigns.delete"], &[], &["nobody"]),
            custom("good", &["contacts.delete"], &[], &["broken"]),
        ],
        ..TenantData::default()
    });
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        problems
            .iter()
            .all(|e| e.at == Location::Tenant { field: "roles" })
    );
    assert!(problems[0].message.contains("custom role `broken`"));
    assert!(problems[1].message.contains("`nobody`"));
    let c = caller("u");
    let p = fx.roles(&t, &["broken", "orphan", "good"]);
    fx.assert_deny(
        &fx.outcome(&fx.one("campaigns.delete"), &c, &t, &p),
        Reason::MissingPermission,
        "campaigns.delete",
    );
    // `good` keeps its own grant; it inherits nothing from `broken`.
    fx.assert_allow(
        &fx.outcome(&fx.one("contacts.delete"), &c, &t, &p),
        "contacts.delete",
    );
}

#[test]
fn custom_role_cycle_is_reported_and_grants_nothing() {
    let fx = Fx::new();
    let (t, problems) = fx.policy.tenant(&TenantData {
        custom_roles: vec![
            custom("x", &["campaigns.delete"], &[], &["y"]),
            custom("y", &["contacts.delete"], &[], &["x"]),
            custom("z", &["campaigns.view"], &[], &["x"]),
        ],
        ..TenantData::default()
    });
    assert_eq!(problems.len(), 1);
    assert_eq!(
        problems[0].message,
        "custom role inheritance cycle: `x` -> `y` -> `x`; these roles grant nothing"
    );
    let c = caller("u");
    let p = fx.roles(&t, &["x", "z"]);
    for perm in ["campaigns.delete", "contacts.delete"] {
        fx.assert_deny(
            &fx.outcome(&fx.one(perm), &c, &t, &p),
            Reason::MissingPermission,
            perm,
        );
    }
    fx.assert_allow(
        &fx.outcome(&fx.one("campaigns.view"), &c, &t, &p),
        "campaigns.view",
    );
}

#[test]
fn unknown_custom_role_in_assignment_grants_nothing() {
    let fx = Fx::new();
    let t = fx.rich();
    let (p, problems) = fx.policy.principal(
        &t,
        &SubjectData {
            roles: s(&["lead"]),
            ..SubjectData::default()
        },
    );
    assert_eq!(problems.len(), 1);
    fx.assert_deny(
        &fx.outcome(&fx.one("campaigns.view"), &caller("u"), &t, &p),
        Reason::MissingPermission,
        "campaigns.view",
    );
}

#[test]
fn custom_role_inheriting_all_scopes_role_bypasses_scopes() {
    let fx = Fx::new();
    let (t, problems) = fx.policy.tenant(&TenantData {
        custom_roles: vec![custom("boss", &[], &[], &["owner"])],
        ..TenantData::default()
    });
    assert_eq!(problems, vec![]);
    let p = fx.who(
        &t,
        SubjectData {
            roles: s(&["boss"]),
            scopes: s(&["brand1"]),
            ..SubjectData::default()
        },
    );
    let mut r = fx.one("campaigns.delete");
    r.has_scope = true;
    let c = Caller {
        scope: Some("brand2"),
        ..caller("u")
    };
    fx.assert_allow(&fx.outcome(&r, &c, &t, &p), "campaigns.delete");
}

// === decisions: identity, public, no route ===

#[test]
fn public_routes_need_no_identity() {
    let fx = Fx::new();
    let r = fx.rule(Requirement::Public);
    let v = decide(&fx.policy, &r, None);
    assert_eq!(
        v.outcome,
        Outcome::Allow {
            own_only: false,
            relied_on: None
        }
    );
    assert!(!v.grant().unwrap().own_only());
    // An identity changes nothing.
    let t = fx.rich();
    let p = fx.roles(&t, &[]);
    assert!(fx.decide(&r, &caller("u"), &t, &p).is_allow());
}

#[test]
fn missing_identity_is_unauthenticated() {
    let fx = Fx::new();
    let mut r = fx.one("campaigns.view");
    let v = decide(&fx.policy, &r, None);
    assert_eq!(
        v.outcome,
        Outcome::Deny(Denial {
            reason: Reason::MissingToken,
            permission: None,
            required_tier: None,
            required_feature: None
        })
    );
    assert_eq!(Reason::MissingToken.status(), 401);
    assert!(v.grant().is_none());
    r.mode = Mode::Monitor;
    let v = decide(&fx.policy, &r, None);
    assert!(!v.is_allow());
    assert!(v.grant().is_some());
}

#[test]
fn no_route_is_never_forwarded() {
    let v = Verdict::no_route();
    assert!(v.grant().is_none());
    assert!(!v.is_allow());
    assert_eq!(Reason::NoRoute.status(), 404);
}

#[test]
fn reason_wire_names_and_statuses() {
    let expected = [
        (Reason::NoRoute, "no_route", 404),
        (Reason::MissingToken, "missing_token", 401),
        (Reason::InvalidToken, "invalid_token", 401),
        (Reason::TokenExpired, "token_expired", 401),
        (Reason::MissingTenant, "missing_tenant", 401),
        (Reason::FeatureDisabled, "feature_disabled", 403),
        (Reason::TierRequired, "tier_required", 403),
        (Reason::DeniedByOverride, "denied_by_override", 403),
        (Reason::MissingPermission, "missing_permission", 403),
        (Reason::NotOwner, "not_owner", 403),
        (Reason::ScopeDenied, "scope_denied", 403),
        (Reason::MfaRequired, "mfa_required", 401),
    ];
    for (r, name, status) in expected {
        assert_eq!(r.as_str(), name);
        assert_eq!(r.to_string(), name);
        assert_eq!(r.status(), status);
    }
}

// === decisions: entitlements ===

#[test]
fn highest_matching_tier_is_required() {
    let fx = Fx::new();
    let p_t = fx.tenant(Some("growth"), &[]);
    let p = fx.roles(&p_t, &["mailer"]);
    // `email.*` -> growth, `email.campaigns.*` -> enterprise, `*.send` -> starter.
    let d = fx.assert_deny(
        &fx.outcome(&fx.one("email.campaigns.send"), &caller("u"), &p_t, &p),
        Reason::TierRequired,
        "email.campaigns.send",
    );
    assert_eq!(d.required_tier.as_deref(), Some("enterprise"));
    assert_eq!(d.required_feature, None);
    fx.assert_allow(
        &fx.outcome(&fx.one("email.lists.view"), &caller("u"), &p_t, &p),
        "email.lists.view",
    );
    let ent = fx.tenant(Some("enterprise"), &[]);
    let p = fx.roles(&ent, &["mailer"]);
    fx.assert_allow(
        &fx.outcome(&fx.one("email.campaigns.send"), &caller("u"), &ent, &p),
        "email.campaigns.send",
    );
}

#[test]
fn lower_tier_fails_tier_requirement() {
    let fx = Fx::new();
    let t = fx.tenant(Some("starter"), &[]);
    let p = fx.roles(&t, &["owner"]);
    let d = fx.assert_deny(
        &fx.outcome(&fx.one("email.lists.view"), &caller("u"), &t, &p),
        Reason::TierRequired,
        "email.lists.view",
    );
    assert_eq!(d.required_tier.as_deref(), Some("growth"));
}

#[test]
fn every_matching_feature_is_required() {
    let fx = Fx::new();
    let t = fx.tenant(Some("enterprise"), &["quality"]);
    let p = fx.roles(&t, &["quality"]);
    let c = caller("u");
    fx.assert_allow(
        &fx.outcome(&fx.one("quality.reports.view"), &c, &t, &p),
        "quality.reports.view",
    );
    let d = fx.assert_deny(
        &fx.outcome(&fx.one("quality.reports.export"), &c, &t, &p),
        Reason::FeatureDisabled,
        "quality.reports.export",
    );
    assert_eq!(d.required_feature.as_deref(), Some("exports"));
    assert_eq!(d.required_tier, None);

    let t = fx.tenant(Some("enterprise"), &["exports"]);
    let p = fx.roles(&t, &["quality"]);
    let d = fx.assert_deny(
        &fx.outcome(&fx.one("quality.reports.export"), &c, &t, &p),
        Reason::FeatureDisabled,
        "quality.reports.export",
    );
    assert_eq!(d.required_feature.as_deref(), Some("quality"));
}

#[test]
fn unknown_features_are_ignored() {
    let fx = Fx::new();
    let t = fx.tenant(Some("starter"), &["no_such_feature"]);
    let p = fx.roles(&t, &["quality"]);
    fx.assert_deny(
        &fx.outcome(&fx.one("quality.reports.view"), &caller("u"), &t, &p),
        Reason::FeatureDisabled,
        "quality.reports.view",
    );
}

#[test]
fn feature_is_checked_before_tier_and_tier_before_deny() {
    let mut def = base_def();
    def.require_tier
        .push(("quality.*".into(), "enterprise".into()));
    let fx = Fx::with(def);
    let c = caller("u");
    let subject = SubjectData {
        deny: s(&["quality.*"]),
        ..SubjectData::default()
    };
    // Lacks feature and tier, and is denied, and holds nothing: feature first.
    let t = fx.tenant(Some("starter"), &[]);
    let p = fx.who(&t, subject.clone());
    fx.assert_deny(
        &fx.outcome(&fx.one("quality.reports.view"), &c, &t, &p),
        Reason::FeatureDisabled,
        "quality.reports.view",
    );
    let t = fx.tenant(Some("starter"), &["quality"]);
    let p = fx.who(&t, subject.clone());
    fx.assert_deny(
        &fx.outcome(&fx.one("quality.reports.view"), &c, &t, &p),
        Reason::TierRequired,
        "quality.reports.view",
    );
    let t = fx.tenant(Some("enterprise"), &["quality"]);
    let p = fx.who(&t, subject);
    fx.assert_deny(
        &fx.outcome(&fx.one("quality.reports.view"), &c, &t, &p),
        Reason::DeniedByOverride,
        "quality.reports.view",
    );
}

#[test]
fn entitlements_apply_whatever_the_role() {
    // Even `*` (owner) cannot use a feature the tenant lacks.
    let fx = Fx::new();
    let t = fx.tenant(Some("enterprise"), &[]);
    let p = fx.roles(&t, &["owner"]);
    fx.assert_deny(
        &fx.outcome(&fx.one("quality.reports.view"), &caller("u"), &t, &p),
        Reason::FeatureDisabled,
        "quality.reports.view",
    );
}

// === decisions: MFA ===

#[test]
fn mfa_required_by_pattern() {
    let fx = Fx::new();
    let t = fx.rich();
    let p = fx.roles(&t, &["billing"]);
    let r = fx.one("billing.invoices.view");
    fx.assert_deny(
        &fx.outcome(&r, &caller("u"), &t, &p),
        Reason::MfaRequired,
        "billing.invoices.view",
    );
    let strong = Caller {
        mfa: true,
        ..caller("u")
    };
    fx.assert_allow(&fx.outcome(&r, &strong, &t, &p), "billing.invoices.view");
}

#[test]
fn mfa_required_by_rule() {
    let fx = Fx::new();
    let t = fx.rich();
    let p = fx.roles(&t, &["viewer"]);
    let mut r = fx.one("campaigns.view");
    fx.assert_allow(&fx.outcome(&r, &caller("u"), &t, &p), "campaigns.view");
    r.mfa = true;
    fx.assert_deny(
        &fx.outcome(&r, &caller("u"), &t, &p),
        Reason::MfaRequired,
        "campaigns.view",
    );
    let strong = Caller {
        mfa: true,
        ..caller("u")
    };
    fx.assert_allow(&fx.outcome(&r, &strong, &t, &p), "campaigns.view");
}

#[test]
fn mfa_comes_after_permission_checks() {
    let fx = Fx::new();
    let t = fx.rich();
    // `*.view` matches exactly one leading segment, so viewer lacks `billing.invoices.view`:
    // the permission failure is reported, not the MFA step-up.
    let p = fx.roles(&t, &["viewer"]);
    fx.assert_deny(
        &fx.outcome(&fx.one("billing.invoices.view"), &caller("u"), &t, &p),
        Reason::MissingPermission,
        "billing.invoices.view",
    );
    let p = fx.roles(&t, &["editor"]);
    fx.assert_deny(
        &fx.outcome(&fx.one("security.keys.rotate"), &caller("u"), &t, &p),
        Reason::MissingPermission,
        "security.keys.rotate",
    );
}

// === decisions: own and owner ===

#[test]
fn own_only_without_owner_param_is_allowed_as_own() {
    let fx = Fx::new();
    let t = fx.rich();
    let p = fx.roles(&t, &["contributor"]);
    let v = fx.decide(&fx.one("contacts.delete"), &caller("u"), &t, &p);
    assert!(fx.assert_allow(&v.outcome, "contacts.delete"));
    assert!(v.grant().unwrap().own_only());
}

#[test]
fn own_only_with_owner_param_must_match_subject_exactly() {
    let fx = Fx::new();
    let t = fx.rich();
    let p = fx.roles(&t, &["contributor"]);
    let mut r = fx.one("campaigns.delete");
    r.has_owner = true;
    let mine = Caller {
        owner: Some("alice"),
        ..caller("alice")
    };
    let v = fx.decide(&r, &mine, &t, &p);
    assert!(fx.assert_allow(&v.outcome, "campaigns.delete"));
    assert!(v.grant().unwrap().own_only());
    for other in [Some("bob"), Some("Alice"), Some("alice "), None] {
        let c = Caller {
            owner: other,
            ..caller("alice")
        };
        let v = fx.decide(&r, &c, &t, &p);
        fx.assert_deny(&v.outcome, Reason::NotOwner, "campaigns.delete");
        assert!(v.grant().is_none());
    }
}

#[test]
fn full_and_own_grant_counts_as_full() {
    let fx = Fx::new();
    let t = fx.rich();
    let p = fx.roles(&t, &["contributor", "deleter"]);
    let mut r = fx.one("campaigns.delete");
    r.has_owner = true;
    let c = Caller {
        owner: Some("bob"),
        ..caller("alice")
    };
    let v = fx.decide(&r, &c, &t, &p);
    assert!(!fx.assert_allow(&v.outcome, "campaigns.delete"));
    assert!(!v.grant().unwrap().own_only());
    // Without owner param: full, so no `x-authz-scope: own`.
    let v = fx.decide(&fx.one("campaigns.delete"), &c, &t, &p);
    assert!(!v.grant().unwrap().own_only());
}

#[test]
fn full_grant_ignores_owner_param() {
    let fx = Fx::new();
    let t = fx.rich();
    let p = fx.roles(&t, &["deleter"]);
    let mut r = fx.one("campaigns.delete");
    r.has_owner = true;
    let c = Caller {
        owner: Some("bob"),
        ..caller("alice")
    };
    assert!(!fx.assert_allow(&fx.outcome(&r, &c, &t, &p), "campaigns.delete"));
}

#[test]
fn not_owner_comes_before_scope_and_mfa() {
    let fx = Fx::new();
    let t = fx.rich();
    let p = fx.who(
        &t,
        SubjectData {
            roles: s(&["contributor"]),
            scopes: s(&["brand1"]),
            ..SubjectData::default()
        },
    );
    let mut r = fx.one("campaigns.delete");
    r.has_owner = true;
    r.has_scope = true;
    r.mfa = true;
    let c = Caller {
        owner: Some("bob"),
        scope: Some("brand9"),
        ..caller("alice")
    };
    fx.assert_deny(
        &fx.outcome(&r, &c, &t, &p),
        Reason::NotOwner,
        "campaigns.delete",
    );
    let c = Caller {
        owner: Some("alice"),
        ..c
    };
    fx.assert_deny(
        &fx.outcome(&r, &c, &t, &p),
        Reason::ScopeDenied,
        "campaigns.delete",
    );
    let c = Caller {
        scope: Some("brand1"),
        ..c
    };
    fx.assert_deny(
        &fx.outcome(&r, &c, &t, &p),
        Reason::MfaRequired,
        "campaigns.delete",
    );
    let c = Caller { mfa: true, ..c };
    assert!(fx.assert_allow(&fx.outcome(&r, &c, &t, &p), "campaigns.delete"));
}

// === decisions: scopes ===

fn scoped(
    fx: &Fx,
    t: &TenantGrants,
    roles: &[&str],
    scopes: &[&str],
    grant: &[&str],
) -> PrincipalGrants {
    fx.who(
        t,
        SubjectData {
            roles: s(roles),
            grant: s(grant),
            scopes: s(scopes),
            ..SubjectData::default()
        },
    )
}

fn scope_rule(fx: &Fx, perm: &str) -> Rule {
    Rule {
        has_scope: true,
        ..fx.one(perm)
    }
}

fn in_scope(scope: &str) -> Caller<'_> {
    Caller {
        scope: Some(scope),
        ..caller("u")
    }
}

#[test]
fn empty_scopes_are_unrestricted() {
    let fx = Fx::new();
    let t = fx.rich();
    let p = scoped(&fx, &t, &["viewer"], &[], &[]);
    let r = scope_rule(&fx, "campaigns.view");
    fx.assert_allow(
        &fx.outcome(&r, &in_scope("anything"), &t, &p),
        "campaigns.view",
    );
    fx.assert_allow(&fx.outcome(&r, &caller("u"), &t, &p), "campaigns.view");
}

#[test]
fn scope_must_be_listed() {
    let fx = Fx::new();
    let t = fx.rich();
    let p = scoped(&fx, &t, &["viewer"], &["brand1", "brand2"], &[]);
    let r = scope_rule(&fx, "campaigns.view");
    fx.assert_allow(
        &fx.outcome(&r, &in_scope("brand2"), &t, &p),
        "campaigns.view",
    );
    fx.assert_deny(
        &fx.outcome(&r, &in_scope("brand3"), &t, &p),
        Reason::ScopeDenied,
        "campaigns.view",
    );
    fx.assert_deny(
        &fx.outcome(&r, &in_scope("Brand1"), &t, &p),
        Reason::ScopeDenied,
        "campaigns.view",
    );
    // A route with a scope param but no value: fail closed.
    fx.assert_deny(
        &fx.outcome(&r, &caller("u"), &t, &p),
        Reason::ScopeDenied,
        "campaigns.view",
    );
    // A route without a scope param ignores the list.
    fx.assert_allow(
        &fx.outcome(&fx.one("campaigns.view"), &in_scope("brand3"), &t, &p),
        "campaigns.view",
    );
    assert_eq!(p.scopes(), &s(&["brand1", "brand2"])[..]);
}

#[test]
fn all_scopes_role_bypasses_scopes_directly_and_inherited() {
    let fx = Fx::new();
    let t = fx.rich();
    for role in ["owner", "co_owner"] {
        let p = scoped(&fx, &t, &[role], &["brand1"], &[]);
        let r = scope_rule(&fx, "campaigns.delete");
        fx.assert_allow(
            &fx.outcome(&r, &in_scope("brand9"), &t, &p),
            "campaigns.delete",
        );
    }
}

#[test]
fn all_scopes_bypass_is_per_permission() {
    let fx = Fx::new();
    let t = fx.rich();
    // auditor (all_scopes) grants campaigns.view; deleter (scoped) grants campaigns.delete.
    let p = scoped(
        &fx,
        &t,
        &["auditor", "deleter"],
        &["brand1"],
        &["contacts.view"],
    );
    let out = in_scope("brand9");
    fx.assert_allow(
        &fx.outcome(&scope_rule(&fx, "campaigns.view"), &out, &t, &p),
        "campaigns.view",
    );
    fx.assert_deny(
        &fx.outcome(&scope_rule(&fx, "campaigns.delete"), &out, &t, &p),
        Reason::ScopeDenied,
        "campaigns.delete",
    );
    // Per-user grants are always scoped.
    fx.assert_deny(
        &fx.outcome(&scope_rule(&fx, "contacts.view"), &out, &t, &p),
        Reason::ScopeDenied,
        "contacts.view",
    );
}

#[test]
fn own_grant_from_all_scopes_role_bypasses_scopes() {
    let fx = Fx::new();
    let t = fx.rich();
    let p = scoped(&fx, &t, &["own_all"], &["brand1"], &[]);
    let r = Rule {
        has_owner: true,
        ..scope_rule(&fx, "contacts.delete")
    };
    let c = Caller {
        owner: Some("u"),
        ..in_scope("brand9")
    };
    assert!(fx.assert_allow(&fx.outcome(&r, &c, &t, &p), "contacts.delete"));
    // The scoped contributor's own grant on the same permission does not bypass.
    let p = scoped(&fx, &t, &["contributor"], &["brand1"], &[]);
    fx.assert_deny(
        &fx.outcome(&r, &c, &t, &p),
        Reason::ScopeDenied,
        "contacts.delete",
    );
}

#[test]
fn scope_comes_before_mfa() {
    let fx = Fx::new();
    let t = fx.rich();
    let p = scoped(&fx, &t, &["billing"], &["brand1"], &[]);
    let r = scope_rule(&fx, "billing.invoices.view");
    fx.assert_deny(
        &fx.outcome(&r, &in_scope("x"), &t, &p),
        Reason::ScopeDenied,
        "billing.invoices.view",
    );
    fx.assert_deny(
        &fx.outcome(&r, &in_scope("brand1"), &t, &p),
        Reason::MfaRequired,
        "billing.invoices.view",
    );
}

// === decisions: all_of / any_of ===

#[test]
fn all_of_reports_first_failure_in_list_order() {
    let fx = Fx::new();
    let t = fx.rich();
    let p = fx.roles(&t, &["viewer", "billing"]);
    let c = caller("u");
    // campaigns.delete: missing; billing.invoices.view: mfa. List order decides.
    fx.assert_deny(
        &fx.outcome(
            &fx.all(&[
                "campaigns.view",
                "campaigns.delete",
                "billing.invoices.view",
            ]),
            &c,
            &t,
            &p,
        ),
        Reason::MissingPermission,
        "campaigns.delete",
    );
    fx.assert_deny(
        &fx.outcome(
            &fx.all(&[
                "campaigns.view",
                "billing.invoices.view",
                "campaigns.delete",
            ]),
            &c,
            &t,
            &p,
        ),
        Reason::MfaRequired,
        "billing.invoices.view",
    );
    fx.assert_allow(
        &fx.outcome(&fx.all(&["campaigns.view", "contacts.view"]), &c, &t, &p),
        "campaigns.view",
    );
}

#[test]
fn all_of_scope_denied_names_first_permission() {
    let fx = Fx::new();
    let t = fx.rich();
    let p = scoped(&fx, &t, &["viewer"], &["brand1"], &[]);
    let r = Rule {
        has_scope: true,
        ..fx.all(&["contacts.view", "campaigns.view"])
    };
    fx.assert_deny(
        &fx.outcome(&r, &in_scope("x"), &t, &p),
        Reason::ScopeDenied,
        "contacts.view",
    );
}

#[test]
fn all_of_with_own_member_is_own_only() {
    let fx = Fx::new();
    let t = fx.rich();
    let p = fx.roles(&t, &["contributor"]);
    let v = fx.decide(
        &fx.all(&["campaigns.view", "contacts.delete"]),
        &caller("u"),
        &t,
        &p,
    );
    assert!(fx.assert_allow(&v.outcome, "contacts.delete"));
    assert!(v.grant().unwrap().own_only());
}

#[test]
fn any_of_allows_when_one_option_passes() {
    let fx = Fx::new();
    let t = fx.rich();
    let p = fx.roles(&t, &["viewer"]);
    let r = fx.any(&["campaigns.delete", "campaigns.view"]);
    assert!(!fx.assert_allow(&fx.outcome(&r, &caller("u"), &t, &p), "campaigns.view"));
}

#[test]
fn any_of_prefers_full_over_own_only() {
    let fx = Fx::new();
    let t = fx.rich();
    let p = fx.roles(&t, &["contributor"]);
    // contacts.delete is own-only, campaigns.view full: full wins even though listed second.
    let v = fx.decide(
        &fx.any(&["contacts.delete", "campaigns.view"]),
        &caller("u"),
        &t,
        &p,
    );
    assert!(!fx.assert_allow(&v.outcome, "campaigns.view"));
    assert!(!v.grant().unwrap().own_only());
    // Only own-only options pass: the first of them is relied on.
    let v = fx.decide(
        &fx.any(&["content.edit", "contacts.delete", "campaigns.delete"]),
        &caller("u"),
        &t,
        &p,
    );
    assert!(fx.assert_allow(&v.outcome, "contacts.delete"));
    assert!(v.grant().unwrap().own_only());
}

#[test]
fn any_of_options_pass_every_check() {
    let fx = Fx::new();
    let t = fx.rich();
    let p = fx.roles(&t, &["contributor", "billing"]);
    // The own-only option fails `not_owner`, the billing option fails MFA, the third passes.
    let r = Rule {
        has_owner: true,
        ..fx.any(&[
            "campaigns.delete",
            "billing.invoices.view",
            "campaigns.view",
        ])
    };
    let c = Caller {
        owner: Some("bob"),
        ..caller("alice")
    };
    fx.assert_allow(&fx.outcome(&r, &c, &t, &p), "campaigns.view");
}

#[test]
fn any_of_reports_first_options_failure() {
    let fx = Fx::new();
    let t = fx.rich();
    let p = fx.roles(&t, &["contributor", "billing"]);
    let r = Rule {
        has_owner: true,
        ..fx.any(&["campaigns.delete", "billing.invoices.view", "content.edit"])
    };
    let c = Caller {
        owner: Some("bob"),
        ..caller("alice")
    };
    fx.assert_deny(
        &fx.outcome(&r, &c, &t, &p),
        Reason::NotOwner,
        "campaigns.delete",
    );
    let r = fx.any(&["billing.invoices.view", "campaigns.delete"]);
    let p = fx.roles(&t, &["billing"]);
    fx.assert_deny(
        &fx.outcome(&r, &c, &t, &p),
        Reason::MfaRequired,
        "billing.invoices.view",
    );
    let r = fx.any(&["content.edit", "billing.invoices.view"]);
    fx.assert_deny(
        &fx.outcome(&r, &c, &t, &p),
        Reason::MissingPermission,
        "content.edit",
    );
}

#[test]
fn empty_combinators_deny() {
    let fx = Fx::new();
    let t = fx.rich();
    let p = fx.roles(&t, &["owner"]);
    for r in [fx.any(&[]), fx.all(&[])] {
        let v = fx.decide(&r, &caller("u"), &t, &p);
        assert!(!v.is_allow());
        assert!(v.grant().is_none());
    }
}

#[test]
fn foreign_permission_id_is_missing() {
    let fx = Fx::new();
    let t = fx.rich();
    let p = fx.roles(&t, &["owner"]);
    let r = fx.rule(Requirement::Permission(PermId(10_000)));
    match fx.outcome(&r, &caller("u"), &t, &p) {
        Outcome::Deny(d) => assert_eq!(d.reason, Reason::MissingPermission),
        Outcome::Allow { .. } => panic!("foreign id allowed"),
    }
}

// === monitor mode ===

#[test]
fn monitor_mode_grants_but_reports_the_enforced_outcome() {
    let fx = Fx::new();
    let t = fx.rich();
    let p = fx.roles(&t, &["viewer"]);
    let r = Rule {
        mode: Mode::Monitor,
        ..fx.one("campaigns.delete")
    };
    let v = fx.decide(&r, &caller("u"), &t, &p);
    fx.assert_deny(&v.outcome, Reason::MissingPermission, "campaigns.delete");
    assert!(!v.is_allow());
    assert!(!v.grant().unwrap().own_only());
    let r = Rule {
        mode: Mode::Monitor,
        ..fx.one("campaigns.view")
    };
    let v = fx.decide(&r, &caller("u"), &t, &p);
    assert!(v.is_allow());
    assert!(v.grant().is_some());
    assert_eq!(Mode::Monitor.as_str(), "monitor");
    assert_eq!(Mode::default(), Mode::Enforce);
}

#[test]
fn monitor_mode_keeps_own_only_on_allow() {
    let fx = Fx::new();
    let t = fx.rich();
    let p = fx.roles(&t, &["contributor"]);
    let r = Rule {
        mode: Mode::Monitor,
        ..fx.one("contacts.delete")
    };
    assert!(
        fx.decide(&r, &caller("u"), &t, &p)
            .grant()
            .unwrap()
            .own_only()
    );
}

#[test]
fn enforce_mode_denials_carry_no_grant() {
    let fx = Fx::new();
    let t = fx.rich();
    let p = fx.roles(&t, &["viewer"]);
    assert!(
        fx.decide(&fx.one("campaigns.delete"), &caller("u"), &t, &p)
            .grant()
            .is_none()
    );
}

// === separator `_` end to end ===

#[test]
fn underscore_separator_end_to_end() {
    let def = PolicyDef {
        separator: '_',
        roles: vec![
            role("viewer", &["*_view"]),
            role("payments", &["payment_*"]),
        ],
        route_permissions: s(&["contacts_view", "payment_methods_view", "payment_refund"]),
        ..PolicyDef::default()
    };
    let fx = Fx::with(def);
    let t = TenantGrants::default();
    let c = caller("u");
    let p = fx.roles(&t, &["viewer"]);
    fx.assert_allow(
        &fx.outcome(&fx.one("contacts_view"), &c, &t, &p),
        "contacts_view",
    );
    fx.assert_deny(
        &fx.outcome(&fx.one("payment_methods_view"), &c, &t, &p),
        Reason::MissingPermission,
        "payment_methods_view",
    );
    let p = fx.roles(&t, &["payments"]);
    fx.assert_allow(
        &fx.outcome(&fx.one("payment_methods_view"), &c, &t, &p),
        "payment_methods_view",
    );
    fx.assert_allow(
        &fx.outcome(&fx.one("payment_refund"), &c, &t, &p),
        "payment_refund",
    );

    let bad = PolicyDef {
        separator: '_',
        route_permissions: s(&["contacts.view"]),
        ..PolicyDef::default()
    };
    let errors = compile_errors(&bad);
    assert_eq!(errors[0].at, Location::RoutePermission { index: 0 });
    assert!(errors[0].message.contains("invalid character `.`"));
}
