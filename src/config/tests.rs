//! Config tests: the full example loads; every section rejects a misspelled key at its line;
//! every semantic check reports its message at the right line; errors are all reported at once.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;
use crate::policy::Requirement;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/config")
}

/// Inline configs live "in" the fixture directory so `jwks_file` and includes resolve.
fn inline_path() -> PathBuf {
    dir().join("inline.toml")
}

const BASE: &str = r#"[server]
listen = "127.0.0.1:8080"

[upstreams.api]
targets = ["127.0.0.1:3000"]

[identity.jwt]
algorithms = ["RS256"]
jwks_file = "../jwt/jwks.json"
issuer = "https://idp.example.com/"

[grants]
store = "file"

[roles.viewer]
permissions = ["*.view"]

[[routes]]
methods = ["GET"]
path = "/api/items/{id}"
permission = "items.view"
upstream = "api"
"#;

fn ok(text: &str) -> Snapshot {
    match load_str(text, &inline_path()) {
        Ok(s) => s,
        Err(e) => panic!("expected a valid config, got:\n{e}"),
    }
}

fn errors(text: &str) -> Vec<ConfigError> {
    match load_str(text, &inline_path()) {
        Ok(_) => panic!("expected errors, config loaded:\n{text}"),
        Err(e) => e.errors,
    }
}

/// The one error of a config; fails listing all when there are more.
fn one_error(text: &str) -> ConfigError {
    let errs = errors(text);
    assert_eq!(errs.len(), 1, "expected one error, got:\n{}", render(&errs));
    errs.into_iter().next().unwrap()
}

fn render(errs: &[ConfigError]) -> String {
    errs.iter().map(|e| e.rendered.clone()).collect()
}

/// 1-based line of the first occurrence of `needle` (after `after`, if given).
fn line_of(text: &str, needle: &str) -> usize {
    let at = text
        .find(needle)
        .unwrap_or_else(|| panic!("`{needle}` not in text"));
    text[..at].matches('\n').count() + 1
}

fn base_with(old: &str, new: &str) -> String {
    assert!(BASE.contains(old), "`{old}` not in BASE");
    BASE.replacen(old, new, 1)
}

/// Assert one error, its line (that of `needle`) and the start of its message.
#[track_caller]
fn assert_one(text: &str, needle: &str, message: &str) -> ConfigError {
    let e = one_error(text);
    assert!(
        e.message.starts_with(message),
        "message `{}` does not start with `{message}`\n{}",
        e.message,
        e.rendered
    );
    assert_eq!(e.line, line_of(text, needle), "wrong line:\n{}", e.rendered);
    e
}

// === valid configurations ===

#[test]
fn base_config_loads_with_defaults() {
    let s = ok(BASE);
    assert_eq!(s.server.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(s.server.admin_listen, None);
    assert_eq!(s.upstreams.len(), 1);
    assert_eq!(s.upstreams[0].connect_timeout, Duration::from_secs(2));
    assert_eq!(s.upstreams[0].request_timeout, Duration::from_secs(30));
    assert_eq!(s.jwt.subject_claim, "sub");
    assert_eq!(
        s.jwt.tenant,
        crate::identity::TenantSource::Claim("tenant".into())
    );
    assert_eq!(s.jwt.leeway, Duration::from_secs(30));
    assert_eq!(s.jwt.jwks_file, Some(dir().join("../jwt/jwks.json")));
    assert_eq!(s.mode, Mode::Enforce);
    assert_eq!(s.unmatched_status, 404);
    assert_eq!(s.headers.subject.as_str(), "x-authz-subject");
    assert_eq!(s.headers.tenant.as_str(), "x-authz-tenant");
    assert_eq!(s.headers.roles.as_str(), "x-authz-roles");
    assert_eq!(s.headers.scope.as_str(), "x-authz-scope");
    assert_eq!(s.headers.request_id.as_str(), "x-request-id");
    assert_eq!(s.grants.cache_ttl, Duration::from_secs(30));
    assert_eq!(s.grants.max_stale, Duration::from_secs(300));
    assert_eq!(s.grants.stale_for, StaleFor::Reads);
    assert!(matches!(s.grants.store, StoreSettings::File(_)));
    assert_eq!(s.audit.allow_events, AllowEvents::All);
    assert!(s.audit.sinks.is_empty());
    assert_eq!(s.audit.gateway_name, "portcullis");
    assert_eq!(s.audit.spool, None);
    let m = s.routes.lookup(&http::Method::GET, "/api/items/7").unwrap();
    let entry = &s.route_entries[m.id];
    assert_eq!(entry.path, "/api/items/{id}");
    let id = s.policy.permission_id("items.view").unwrap();
    assert_eq!(entry.rule.requirement, Requirement::Permission(id));
    assert_eq!(entry.upstream, 0);
    assert_eq!(
        &*entry.required,
        ["items.view"],
        "audit `required`, built at load"
    );
}

#[test]
fn full_example_loads() {
    let s = match load(&dir().join("gateway.toml")) {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(s.server.admin_listen.unwrap().to_string(), "127.0.0.1:9090");
    assert_eq!(s.upstreams[1].name, "billing");
    assert_eq!(s.upstreams[1].targets.len(), 2);
    assert_eq!(s.headers.subject.as_str(), "x-user");
    assert_eq!(s.audit.allow_events, AllowEvents::Sample(0.01));
    assert_eq!(s.audit.gateway_name, "gw-1");
    assert_eq!(
        s.audit.sinks,
        vec![
            SinkSettings::new("stdout-0", AuditFormat::Json, SinkKind::Stdout),
            SinkSettings::new(
                "file-1",
                AuditFormat::Json,
                SinkKind::File {
                    path: PathBuf::from("/var/log/portcullis/audit.jsonl"),
                    max_size: None,
                    max_files: 5,
                }
            )
        ]
    );
    let spool = s.audit.spool.as_ref().unwrap();
    assert_eq!(spool.dir, dir().join("spool"));
    assert_eq!(spool.max_size, 1 << 30);
    assert_eq!(spool.on_full, OnFull::Block);
    // Main file routes first, then the included ones.
    assert_eq!(s.route_entries.len(), 6);
    let owner = &s.route_entries[1];
    assert_eq!(owner.methods, vec![http::Method::PUT, http::Method::PATCH]);
    assert_eq!(owner.owner_param.as_deref(), Some("user_id"));
    assert!(owner.rule.has_owner);
    let brand = &s.route_entries[2];
    assert_eq!(brand.scope_param.as_deref(), Some("brand_id"));
    assert!(brand.rule.has_scope);
    assert_eq!(brand.rule.mode, Mode::Monitor);
    assert_eq!(brand.deny_status, Some(404));
    assert!(matches!(brand.rule.requirement, Requirement::AllOf(ref p) if p.len() == 2));
    assert_eq!(s.route_entries[3].rule.requirement, Requirement::Public);
    let invoices = &s.route_entries[4];
    assert!(invoices.rule.mfa);
    assert_eq!(invoices.upstream, 1);
    assert!(matches!(invoices.rule.requirement, Requirement::AnyOf(_)));
    // Audit `required`: the requirement's names, in the order written; none for a public route.
    for entry in &s.route_entries {
        let ids: Vec<_> = match &entry.rule.requirement {
            Requirement::Public => Vec::new(),
            Requirement::Permission(id) => vec![*id],
            Requirement::AnyOf(ids) | Requirement::AllOf(ids) => ids.to_vec(),
        };
        let names: Vec<&str> = ids.iter().map(|id| s.policy.permission_name(*id)).collect();
        assert_eq!(
            entry
                .required
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
            names
        );
    }
    assert!(s.route_entries[3].required.is_empty());
    assert_eq!(brand.required.len(), 2);
    assert!(s.policy.has_role("billing_admin"));
    assert!(s.policy.has_role("member"));
    let StoreSettings::File(data) = &s.grants.store else {
        panic!("file store expected");
    };
    assert_eq!(data.tenants.len(), 1);
    assert_eq!(data.tenants[0].1.tier.as_deref(), Some("growth"));
    assert_eq!(data.tenants[0].1.custom_roles[0].name, "auditor");
    assert_eq!(data.assignments.len(), 2);
    assert_eq!(data.assignments[1].0, ("acme".into(), "bob".into()));
    assert_eq!(data.assignments[1].1.scopes, vec!["brand-1".to_owned()]);
    // HEAD falls back to GET on the compiled table.
    assert!(s.routes.lookup(&http::Method::HEAD, "/healthz").is_some());
}

#[test]
fn redis_store_and_options() {
    let text = base_with(
        "[grants]\nstore = \"file\"\n",
        "[grants]\nstore = \"redis\"\nstale_for = \"all\"\n[grants.redis]\nurl = \"redis://127.0.0.1:6379/0\"\n\n[policy]\nmode = \"monitor\"\nseparator = \":\"\nunmatched_status = 403\n",
    )
    .replace("*.view", "*:view")
    .replace("items.view", "items:view");
    let s = ok(&text);
    match &s.grants.store {
        StoreSettings::Redis(r) => {
            assert!(
                matches!(&r.target, RedisTarget::Url(u) if u == "redis://127.0.0.1:6379/0"),
                "{:?}",
                r.target
            );
            assert_eq!(r.prefix, "authz");
            assert_eq!(r.connect_timeout, std::time::Duration::from_secs(1));
            assert_eq!(r.command_timeout, std::time::Duration::from_millis(250));
            assert_eq!(r.cache_capacity, 100_000);
            assert!(r.client_tracking);
        }
        StoreSettings::File(_) => panic!("redis expected"),
    }
    assert_eq!(s.grants.stale_for, StaleFor::All);
    assert_eq!(s.mode, Mode::Monitor);
    assert_eq!(s.route_entries[0].rule.mode, Mode::Monitor);
    assert_eq!(s.policy.separator(), ':');
    assert_eq!(s.unmatched_status, 403);
}

const REDIS: &str =
    "[grants]\nstore = \"redis\"\n[grants.redis]\nurl = \"redis://127.0.0.1:6379/0\"\n";

fn redis_base(extra_redis: &str) -> String {
    base_with(
        "[grants]\nstore = \"file\"\n",
        &format!("{REDIS}{extra_redis}"),
    )
}

#[test]
fn redis_options_and_url_checks() {
    let s = ok(&redis_base(
        "prefix = \"pc\"\nusername = \"gw\"\nconnect_timeout = \"2s\"\ncommand_timeout = \"100ms\"\ncache_capacity = 10\nclient_tracking = false\n",
    ));
    let StoreSettings::Redis(r) = &s.grants.store else {
        panic!("redis expected")
    };
    assert_eq!(
        (r.prefix.as_str(), r.username.as_deref()),
        ("pc", Some("gw"))
    );
    assert_eq!(r.connect_timeout, Duration::from_secs(2));
    assert_eq!(r.command_timeout, Duration::from_millis(100));
    assert_eq!(r.cache_capacity, 10);
    assert!(!r.client_tracking);
    // TLS and unix sockets are accepted; the password never shows in Debug.
    for url in [
        "rediss://:s3cret@cache.example.com:6380/0",
        "unix:///run/redis.sock",
    ] {
        let text = redis_base("").replace("redis://127.0.0.1:6379/0", url);
        let s = ok(&text);
        assert!(!format!("{:?}", s.grants.store).contains("s3cret"));
    }
    let text = redis_base("").replace(
        "redis://127.0.0.1:6379/0",
        "redis+sentinel://10.0.0.1:26379/mymaster",
    );
    let e = assert_one(
        &text,
        "redis+sentinel",
        "Sentinel is configured with `sentinels` and `master_name`, not a URL",
    );
    assert!(e.help.as_deref().unwrap_or("").contains("master_name"));
    let text = redis_base("").replace("redis://127.0.0.1:6379/0", "redis+cluster://10.0.0.1:7000");
    assert_one(&text, "redis+cluster", "Redis Cluster is not supported");
    let text = redis_base("").replace("redis://127.0.0.1:6379/0", "http://user:pw@x");
    let e = assert_one(&text, "http://", "invalid Redis URL");
    assert!(!e.message.contains("pw"), "{}", e.message);
    assert_one(
        &redis_base("prefix = \"a:b\"\n"),
        "a:b",
        "invalid key prefix `a:b`",
    );
    assert_one(
        &redis_base("command_timeout = \"0s\"\n"),
        "0s",
        "`command_timeout` must be greater than zero",
    );
    assert_one(
        &redis_base("cache_capacity = 0\n"),
        "cache_capacity = 0",
        "`cache_capacity` must be a positive number",
    );
    assert_one(
        &redis_base("password_env = \"PORTCULLIS_TEST_UNSET_VARIABLE\"\n"),
        "PORTCULLIS_TEST_UNSET_VARIABLE",
        "environment variable `PORTCULLIS_TEST_UNSET_VARIABLE` is not set",
    );
}

#[test]
fn api_key_identity_needs_redis_and_its_kind() {
    let text = format!(
        "{}\n[identity]\nkinds = [\"jwt\", \"api_key\"]\n",
        redis_base("")
    );
    let s = ok(&text);
    assert!(s.identity.jwt);
    assert_eq!(
        s.identity.api_key.as_ref().map(|a| a.header.as_str()),
        Some("x-api-key")
    );
    let text = format!(
        "{}\n[identity]\nkinds = [\"api_key\"]\n[identity.api_key]\nheader = \"x-key\"\n",
        redis_base("")
    );
    let s = ok(&text);
    assert!(!s.identity.jwt);
    assert_eq!(s.identity.api_key.unwrap().header.as_str(), "x-key");
    let text = format!(
        "{}\n[identity.api_key]\nheader = \"x-key\"\n",
        redis_base("")
    );
    assert_one(
        &text,
        "[identity.api_key]",
        "`[identity.api_key]` is set but `api_key` is not in `kinds`",
    );
}

#[test]
fn tenant_from_header_and_claim() {
    let text = format!("{BASE}\n[identity.tenant]\nfrom = \"header:x-tenant-id\"\n");
    let s = ok(&text);
    assert_eq!(
        s.jwt.tenant,
        crate::identity::TenantSource::Header("x-tenant-id".into())
    );
    let text = format!("{BASE}\n[identity.tenant]\nfrom = \"claim:org\"\n");
    assert_eq!(
        ok(&text).jwt.tenant,
        crate::identity::TenantSource::Claim("org".into())
    );
}

// === syntax and unknown keys ===

#[test]
fn syntax_error_has_file_line_and_caret() {
    let text = format!("{BASE}\n[policy]\nmode = enforce\n");
    let e = assert_one(&text, "mode = enforce", "");
    assert_eq!(e.file, inline_path());
    assert!(e.rendered.starts_with("error: "), "{}", e.rendered);
    assert!(e.rendered.contains("inline.toml:"), "{}", e.rendered);
    assert!(e.rendered.contains("| mode = enforce"), "{}", e.rendered);
    assert!(e.rendered.contains('^'), "{}", e.rendered);
}

#[test]
fn misspelled_key_in_every_section_is_rejected_at_its_line() {
    // (config text, misspelled key, expected suggestion)
    let cases: Vec<(String, &str, Option<&str>)> = vec![
        (format!("lsiten_typo = 1\n{BASE}"), "lsiten_typo", None),
        (
            base_with("listen = ", "lisen = "),
            "lisen",
            Some("did you mean `listen`?"),
        ),
        (
            base_with("targets = ", "target = "),
            "target",
            Some("did you mean `targets`?"),
        ),
        (
            format!("{BASE}\n[identity]\nkind = [\"jwt\"]\n"),
            "kind",
            Some("did you mean `kinds`?"),
        ),
        (
            base_with("issuer = ", "isuer = "),
            "isuer",
            Some("did you mean `issuer`?"),
        ),
        (
            format!("{BASE}\n[identity.tenant]\nfrm = \"claim:t\"\n"),
            "frm",
            Some("did you mean `from`?"),
        ),
        (
            base_with("store = ", "stor = "),
            "stor",
            Some("did you mean `store`?"),
        ),
        (
            base_with(
                "store = \"file\"\n",
                "store = \"redis\"\n[grants.redis]\nurll = \"redis://x\"\n",
            ),
            "urll",
            Some("did you mean `url`?"),
        ),
        (
            format!("{BASE}\n[policy]\nmodee = \"enforce\"\n"),
            "modee",
            Some("did you mean `mode`?"),
        ),
        (
            format!("{BASE}\n[headers]\nsubjct = \"x-s\"\n"),
            "subjct",
            Some("did you mean `subject`?"),
        ),
        (
            base_with("permissions = [\"*.view\"]", "permission = [\"*.view\"]"),
            "permission = [",
            Some("did you mean `permissions`?"),
        ),
        (
            format!("{BASE}\n[entitlements]\ntier = [\"a\"]\n"),
            "tier",
            Some("did you mean `tiers`?"),
        ),
        (
            format!("{BASE}\n[entitlements.mfa]\nrequires = [\"a.*\"]\n"),
            "requires",
            Some("did you mean `require`?"),
        ),
        (
            base_with("upstream = \"api\"", "upstrem = \"api\""),
            "upstrem",
            Some("did you mean `upstream`?"),
        ),
        (
            format!("{BASE}\n[tenants.acme]\ntiers = \"growth\"\n"),
            "tiers = ",
            Some("did you mean `tier`?"),
        ),
        (
            format!("{BASE}\n[tenants.acme.roles.r]\npermisions = [\"a.view\"]\n"),
            "permisions",
            Some("did you mean `permissions`?"),
        ),
        (
            format!(
                "{BASE}\n[[assignments]]\ntenant = \"a\"\nsubject = \"b\"\nrole = [\"viewer\"]\n"
            ),
            "role = ",
            Some("did you mean `roles`?"),
        ),
        (
            format!("{BASE}\n[audit]\nallow_event = \"all\"\n"),
            "allow_event",
            Some("did you mean `allow_events`?"),
        ),
        (
            format!("{BASE}\n[audit.spool]\ndir = \"s\"\nmax_sise = \"1GiB\"\n"),
            "max_sise",
            Some("did you mean `max_size`?"),
        ),
        (
            format!("{BASE}\n[[audit.sinks]]\ntype = \"file\"\npth = \"a.log\"\n"),
            "pth",
            Some("did you mean `path`?"),
        ),
        (
            format!("{BASE}\n[limits]\nmax_bdy = \"1MiB\"\n"),
            "max_bdy",
            Some("did you mean `max_body`?"),
        ),
        (
            format!("{BASE}\n[cors]\nallow_origin = \"*\"\n"),
            "allow_origin",
            Some("did you mean `allow_origins`?"),
        ),
        (
            base_with(
                "listen = \"127.0.0.1:8080\"",
                "listen = \"127.0.0.1:8080\"\n[server.tls]\ncerts = \"a\"\n",
            ),
            "certs",
            Some("did you mean `cert`?"),
        ),
        (
            base_with("targets = ", "max_failure = 2\ntargets = "),
            "max_failure",
            Some("did you mean `max_failures`?"),
        ),
    ];
    for (text, key, help) in cases {
        let errs = errors(&text);
        let e = errs
            .iter()
            .find(|e| {
                e.message.contains(&format!(
                    "unknown field `{}",
                    key.split(' ').next().unwrap()
                ))
            })
            .unwrap_or_else(|| panic!("no unknown-field error for `{key}`:\n{}", render(&errs)));
        assert_eq!(
            e.line,
            line_of(&text, key),
            "wrong line for `{key}`:\n{}",
            e.rendered
        );
        assert!(e.column > 0);
        if let Some(help) = help {
            assert_eq!(e.help.as_deref(), Some(help), "{}", e.rendered);
        }
        assert!(e.rendered.contains(" = help: ") == e.help.is_some());
    }
}

// === all errors at once ===

#[test]
fn three_mistakes_are_all_reported_with_their_lines() {
    let text = base_with("listen = \"127.0.0.1:8080\"", "listen = \"localhost\"")
        .replace("upstream = \"api\"", "upstream = \"apii\"")
        + "\n[policy]\nseparator = \"::\"\n";
    let errs = errors(&text);
    assert_eq!(errs.len(), 3, "{}", render(&errs));
    assert_eq!(errs[0].line, line_of(&text, "listen ="));
    assert_eq!(errs[0].message, "invalid listen address `localhost`");
    assert_eq!(errs[1].line, line_of(&text, "upstream = \"apii\""));
    assert_eq!(
        errs[1].message,
        "unknown upstream `apii` in route `GET /api/items/{id}`"
    );
    assert_eq!(errs[2].line, line_of(&text, "separator"));
    assert!(
        errs[2]
            .message
            .starts_with("`separator` must be exactly one character")
    );
    // Sorted by line.
    let mut sorted = errs.clone();
    sorted.sort_by_key(|e| e.line);
    assert_eq!(sorted, errs);
}

#[test]
fn config_errors_display_renders_everything() {
    let text = base_with("listen = \"127.0.0.1:8080\"", "listen = \"nope\"")
        .replace("upstream = \"api\"", "upstream = \"x\"");
    let err = load_str(&text, &inline_path()).err().unwrap();
    let shown = err.to_string();
    assert!(shown.contains("invalid listen address `nope`"));
    assert!(shown.contains("unknown upstream `x`"));
    assert!(shown.ends_with("2 configuration errors"), "{shown}");
}

#[test]
fn rendered_diagnostic_shape() {
    let text = base_with("upstream = \"api\"", "upstream = \"apu\"");
    let e = one_error(&text);
    let line = line_of(&text, "upstream = \"apu\"");
    let expected = format!(
        "error: unknown upstream `apu` in route `GET /api/items/{{id}}`\n  --> {}:{line}:12\n   |\n{line} | upstream = \"apu\"\n   |            ^^^^^\n   = help: did you mean `api`? (defined upstreams: `api`)\n",
        inline_path().display()
    );
    assert_eq!(e.rendered, expected);
    assert_eq!(e.key, "routes[0].upstream");
    assert_eq!(e.column, 12);
}

// === semantic checks ===

#[test]
fn unknown_upstream_lists_defined_ones() {
    let text = base_with("upstream = \"api\"", "upstream = \"payments\"");
    let e = assert_one(&text, "payments", "unknown upstream `payments`");
    assert_eq!(e.help.as_deref(), Some("defined upstreams: `api`"));
}

#[test]
fn lower_case_method() {
    let text = base_with("[\"GET\"]", "[\"get\"]");
    let e = assert_one(&text, "\"get\"", "method `get` must be upper-case");
    assert_eq!(e.help.as_deref(), Some("write `GET`"));
    let text = base_with("[\"GET\"]", "[\"GTE\"]");
    let e = assert_one(&text, "\"GTE\"", "unknown method `GTE`");
    assert_eq!(e.help.as_deref(), Some("did you mean `GET`?"));
}

#[test]
fn path_must_start_with_slash_and_use_braces() {
    let text = base_with("\"/api/items/{id}\"", "\"api/items\"");
    let e = assert_one(
        &text,
        "\"api/items\"",
        "route path `api/items` must start with `/`",
    );
    assert_eq!(e.help.as_deref(), Some("write `/api/items`"));
    let text = base_with("\"/api/items/{id}\"", "\"/api/items/:id\"");
    let e = assert_one(
        &text,
        ":id",
        "`:id` in route path `/api/items/:id` is not a parameter",
    );
    assert_eq!(
        e.help.as_deref(),
        Some("use `{id}`: write `/api/items/{id}`")
    );
}

#[test]
fn owner_and_scope_must_name_path_params() {
    let text = base_with(
        "upstream = \"api\"",
        "upstream = \"api\"\nowner = \"{user}\"",
    );
    let e = assert_one(
        &text,
        "owner",
        "`owner` names `{user}`, which is not a parameter",
    );
    assert_eq!(
        e.help.as_deref(),
        Some("parameters of `/api/items/{id}`: `id`")
    );
    let text = base_with("upstream = \"api\"", "upstream = \"api\"\nscope = \"id\"");
    let e = assert_one(
        &text,
        "scope",
        "`scope` must name a path parameter as `\"{param}\"`",
    );
    assert_eq!(e.help.as_deref(), Some("write `scope = \"{id}\"`"));
}

#[test]
fn requirement_exactly_one() {
    let text = base_with("permission = \"items.view\"\n", "");
    let e = assert_one(
        &text,
        "[[routes]]",
        "route `GET /api/items/{id}` has no requirement",
    );
    assert!(e.help.unwrap().contains("public = true"));
    let text = base_with(
        "permission = \"items.view\"\n",
        "permission = \"items.view\"\nany_of = [\"a.b\"]\n",
    );
    assert_one(
        &text,
        "any_of",
        "route `GET /api/items/{id}` sets both `permission` and `any_of`",
    );
    let text = base_with("permission = \"items.view\"", "all_of = []");
    assert_one(
        &text,
        "all_of",
        "`all_of` of route `GET /api/items/{id}` is empty",
    );
}

#[test]
fn route_permission_must_be_concrete() {
    let text = base_with("permission = \"items.view\"", "permission = \"items.*\"");
    let e = assert_one(
        &text,
        "items.*",
        "route `GET /api/items/{id}` requires `items.*`, a pattern",
    );
    assert!(e.help.unwrap().contains("wildcards belong in roles"));
}

#[test]
fn route_permission_grammar_errors_come_from_policy_at_the_element() {
    let text = base_with(
        "permission = \"items.view\"",
        "any_of = [\"items.view\", \"items..edit\"]",
    );
    let e = one_error(&text);
    assert_eq!(e.line, line_of(&text, "any_of"));
    assert_eq!(
        e.column,
        text.lines()
            .nth(e.line - 1)
            .unwrap()
            .find("\"items..edit")
            .unwrap()
            + 1
    );
    assert_eq!(e.key, "routes[0].any_of[1]");
}

#[test]
fn duplicate_route_reports_both_locations() {
    let text = format!(
        "{BASE}\n[[routes]]\nmethods = [\"POST\", \"GET\"]\npath = \"/api/items/{{id}}\"\npermission = \"items.view\"\nupstream = \"api\"\n"
    );
    let errs = errors(&text);
    assert_eq!(errs.len(), 2, "{}", render(&errs));
    let first = line_of(&text, "path = \"/api/items/{id}\"");
    let second = text.rfind("path = \"/api/items/{id}\"").unwrap();
    let second = text[..second].matches('\n').count() + 1;
    assert_eq!(errs[0].line, first);
    assert_eq!(errs[1].line, second);
    assert!(
        errs[1]
            .message
            .starts_with("duplicate route `GET /api/items/{id}`")
    );
    assert!(
        errs[1].message.contains(&format!("inline.toml:{first}:")),
        "{}",
        errs[1].message
    );
    assert!(errs[0].message.contains(&format!("inline.toml:{second}:")));
}

#[test]
fn conflicting_route_names_the_other() {
    let text = format!(
        "{BASE}\n[[routes]]\nmethods = [\"GET\"]\npath = \"/api/items/{{item}}\"\npermission = \"items.view\"\nupstream = \"api\"\n"
    );
    let errs = errors(&text);
    assert_eq!(errs.len(), 2, "{}", render(&errs));
    assert!(
        errs[1]
            .message
            .starts_with("conflicting route `GET /api/items/{item}`")
    );
    assert_eq!(errs[1].line, line_of(&text, "{item}"));
}

#[test]
fn unknown_role_in_inherits_and_cycles() {
    let text = format!("{BASE}\n[roles.editor]\ninherits = [\"viewer\", \"viewr\"]\n");
    let e = one_error(&text);
    assert_eq!(e.line, line_of(&text, "\"viewr\""));
    assert!(e.message.contains("`viewr`"), "{}", e.rendered);
    assert_eq!(e.help.as_deref(), Some("did you mean `viewer`?"));
    assert_eq!(e.key, "roles.editor.inherits[1]");

    let text = format!("{BASE}\n[roles.a]\ninherits = [\"b\"]\n[roles.b]\ninherits = [\"a\"]\n");
    let errs = errors(&text);
    assert!(!errs.is_empty());
    assert!(errs[0].message.contains("cycle"), "{}", render(&errs));
    assert!(
        errs.iter()
            .all(|e| e.line == line_of(&text, "[\"b\"]") || e.line == line_of(&text, "[\"a\"]")),
        "{}",
        render(&errs)
    );
}

#[test]
fn bad_role_pattern_points_at_element() {
    let text = base_with("[\"*.view\"]", "[\"*.view\", \"camp*.edit\"]");
    let e = one_error(&text);
    assert_eq!(e.line, line_of(&text, "camp*"));
    assert_eq!(e.key, "roles.viewer.permissions[1]");
    let col = text
        .lines()
        .nth(e.line - 1)
        .unwrap()
        .find("\"camp*")
        .unwrap()
        + 1;
    assert_eq!(e.column, col);
}

#[test]
fn aliases() {
    let text = format!("{BASE}\n[aliases]\nmember = \"editr\"\n");
    let e = assert_one(
        &text,
        "\"editr\"",
        "alias `member` names unknown role `editr`",
    );
    assert_eq!(e.help.as_deref(), Some("defined roles: `viewer`"));
    let text = format!("{BASE}\n[aliases]\nviewer = \"viewer\"\n");
    assert_one(
        &text,
        "viewer = ",
        "alias `viewer` has the same name as a role",
    );
}

#[test]
fn assignment_with_unknown_role_is_a_config_error() {
    let text = format!(
        "{BASE}\n[[assignments]]\ntenant = \"acme\"\nsubject = \"alice\"\nroles = [\"viewer\", \"admin\"]\n"
    );
    let e = one_error(&text);
    assert_eq!(e.line, line_of(&text, "\"admin\""));
    assert!(e.message.contains("unknown role `admin`"), "{}", e.rendered);
    assert_eq!(e.key, "assignments[0].roles[1]");
    let col = text
        .lines()
        .nth(e.line - 1)
        .unwrap()
        .find("\"admin\"")
        .unwrap()
        + 1;
    assert_eq!(e.column, col);
}

#[test]
fn assignment_tenant_custom_role_is_known() {
    let text = format!(
        "{BASE}\n[tenants.acme.roles.support]\npermissions = [\"items.view\"]\n[[assignments]]\ntenant = \"acme\"\nsubject = \"s\"\nroles = [\"support\"]\n"
    );
    ok(&text);
    let text = format!(
        "{BASE}\n[tenants.acme.roles.support]\npermissions = [\"items.view\"]\ninherits = [\"nobody\"]\n"
    );
    let e = one_error(&text);
    assert_eq!(e.line, line_of(&text, "\"nobody\""), "{}", e.rendered);
}

#[test]
fn duplicate_assignment() {
    let a = "\n[[assignments]]\ntenant = \"acme\"\nsubject = \"alice\"\nroles = [\"viewer\"]\n";
    let text = format!("{BASE}{a}{a}");
    let e = one_error(&text);
    assert!(
        e.message
            .starts_with("subject `alice` of tenant `acme` is assigned twice")
    );
    assert_eq!(
        e.line,
        text.rfind("subject = \"alice\"")
            .map(|i| text[..i].matches('\n').count() + 1)
            .unwrap()
    );
}

#[test]
fn store_data_with_redis_store() {
    let text = base_with(
        "store = \"file\"\n",
        "store = \"redis\"\n[grants.redis]\nurl = \"redis://localhost\"\n",
    ) + "\n[tenants.acme]\ntier = \"x\"\n";
    let errs = errors(&text);
    assert!(
        errs.iter()
            .any(|e| e.message == "`[tenants.*]` is only used with `store = \"file\"`"),
        "{}",
        render(&errs)
    );
    let text = base_with("store = \"file\"\n", "store = \"redis\"\n");
    assert_one(
        &text,
        "store = ",
        "`store = \"redis\"` needs a `[grants.redis]` section",
    );
}

#[test]
fn durations() {
    let text = base_with(
        "targets = [\"127.0.0.1:3000\"]",
        "targets = [\"127.0.0.1:3000\"]\nconnect_timeout = \"2 parsecs\"",
    );
    let e = assert_one(&text, "connect_timeout", "invalid duration `2 parsecs`");
    assert!(e.help.unwrap().contains("`30s`"));
    let text = base_with("store = \"file\"", "store = \"file\"\ncache_ttl = \"30\"");
    assert_one(&text, "cache_ttl", "invalid duration `30`");
    let text = base_with("issuer =", "leeway = \"5m\"\nissuer =");
    let e = assert_one(&text, "leeway", "`leeway` of `5m` is more than 60s");
    assert!(e.help.unwrap().contains("at most `60s`"));
}

#[test]
fn jwt_cache_size() {
    let debug = |s: &Snapshot| format!("{:?}", s.authenticator);
    assert!(debug(&ok(BASE)).contains("cache_capacity: 10000"));
    let off = ok(&base_with("issuer =", "cache_size = 0\nissuer ="));
    assert!(debug(&off).contains("cache_capacity: 0"), "{}", debug(&off));
    let text = base_with("issuer =", "cache_size = -1\nissuer =");
    let e = assert_one(
        &text,
        "cache_size",
        "`cache_size` must be 0 (no cache) up to",
    );
    assert!(e.help.unwrap().contains("cache_size = 10000"));
    let text = base_with("issuer =", "cache_size = 20000000\nissuer =");
    assert_one(
        &text,
        "cache_size",
        "`cache_size` must be 0 (no cache) up to",
    );
}

#[test]
fn sizes() {
    let text = format!("{BASE}\n[audit.spool]\ndir = \"s\"\nmax_size = \"lots\"\n");
    assert_one(&text, "max_size", "invalid size `lots`");
}

#[test]
fn separator_length() {
    let text = format!("{BASE}\n[policy]\nseparator = \"\"\n");
    assert_one(
        &text,
        "separator",
        "`separator` must be exactly one character, got ``",
    );
}

#[test]
fn policy_values() {
    let text = format!("{BASE}\n[policy]\ndefault = \"allow\"\n");
    let e = assert_one(
        &text,
        "default",
        "invalid `default` value `allow`; expected `deny`",
    );
    assert!(e.help.unwrap().starts_with("only `deny` is supported"));
    let text = format!("{BASE}\n[policy]\nmode = \"monitr\"\n");
    let e = assert_one(&text, "mode", "invalid `mode` value `monitr`");
    assert_eq!(e.help.as_deref(), Some("did you mean `monitor`?"));
    let text = format!("{BASE}\n[policy]\nunmatched_status = 401\n");
    assert_one(
        &text,
        "unmatched_status",
        "invalid `unmatched_status` `401`",
    );
    let text = base_with(
        "upstream = \"api\"",
        "upstream = \"api\"\ndeny_status = 500",
    );
    assert_one(&text, "deny_status", "invalid `deny_status` `500`");
}

#[test]
fn tier_and_feature_names() {
    let ent = "\n[entitlements]\ntiers = [\"starter\", \"growth\"]\n[entitlements.require_tier]\n\"email.*\" = \"grwoth\"\n";
    let text = format!("{BASE}{ent}");
    let e = assert_one(&text, "\"grwoth\"", "unknown tier `grwoth`");
    assert_eq!(e.help.as_deref(), Some("did you mean `growth`?"));
    let text = format!("{BASE}\n[entitlements]\ntiers = [\"starter\", \"star ter\"]\n");
    assert_one(&text, "\"star ter\"", "invalid tier name `star ter`");
    let text = format!(
        "{BASE}\n[entitlements]\ntiers = [\"a\"]\n[entitlements.require_feature]\n\"q.*\" = \"has space\"\n"
    );
    assert_one(&text, "has space", "invalid feature name `has space`");
    let text =
        format!("{BASE}\n[entitlements]\ntiers = [\"starter\"]\n[tenants.acme]\ntier = \"gold\"\n");
    let e = one_error(&text);
    assert_eq!(e.line, line_of(&text, "\"gold\""));
    assert!(e.message.contains("unknown tier `gold`"));
}

#[test]
fn headers_must_be_lower_case_and_distinct() {
    let text = format!("{BASE}\n[headers]\nsubject = \"X-User\"\n");
    let e = assert_one(&text, "X-User", "header name `X-User` must be lower-case");
    assert_eq!(e.help.as_deref(), Some("write `x-user`"));
    let text = format!("{BASE}\n[headers]\nsubject = \"x-a\"\ntenant = \"x-a\"\n");
    assert_one(
        &text,
        "tenant = ",
        "header `x-a` is already used for `subject`",
    );
    let text = format!("{BASE}\n[headers]\nroles = \"bad header\"\n");
    assert_one(&text, "roles = ", "invalid header name `bad header`");
    // The gateway sets these itself: an identity header may not take their name.
    let text = format!("{BASE}\n[headers]\nsubject = \"x-forwarded-for\"\n");
    assert_one(&text, "subject = ", "header `x-forwarded-for` is reserved");
}

#[test]
fn identity_checks() {
    let text = format!("{BASE}\n[identity]\nkinds = [\"jwt\", \"api_key\"]\n");
    let e = assert_one(
        &text,
        "api_key",
        "API keys are looked up in Redis and need `store = \"redis\"`",
    );
    assert_eq!(
        e.help.as_deref(),
        Some("set `[grants] store = \"redis\"` or remove `api_key` from `kinds`")
    );
    let text = base_with("[\"RS256\"]", "[\"RS265\"]");
    let e = assert_one(&text, "RS265", "unsupported JWT algorithm `RS265`");
    assert_eq!(e.help.as_deref(), Some("did you mean `RS256`?"));
    let text = base_with("[\"RS256\"]", "[\"none\"]");
    assert_one(&text, "none", "algorithm `none` is never accepted");
    let text = format!("{BASE}\n[identity.tenant]\nfrom = \"header:X-Tenant\"\n");
    assert_one(
        &text,
        "X-Tenant",
        "header name `X-Tenant` must be lower-case",
    );
    let text = format!("{BASE}\n[identity.tenant]\nfrom = \"host\"\n");
    assert_one(
        &text,
        "\"host\"",
        "tenant source `host` is not supported yet",
    );
    let text = base_with("issuer =", "tenant_claim = \"org\"\nissuer =")
        + "\n[identity.tenant]\nfrom = \"header:x-t\"\n";
    assert_one(
        &text,
        "tenant_claim",
        "`tenant_claim` and `[identity.tenant]`",
    );
}

#[test]
fn missing_secret_env_names_the_variable() {
    let text = base_with(
        "algorithms = [\"RS256\"]\njwks_file = \"../jwt/jwks.json\"",
        "algorithms = [\"HS256\"]\nsecret_env = \"PORTCULLIS_CONFIG_TEST_NEVER_SET\"",
    );
    let e = assert_one(
        &text,
        "secret_env",
        "environment variable `PORTCULLIS_CONFIG_TEST_NEVER_SET`",
    );
    assert_eq!(
        e.help.as_deref(),
        Some(
            "export PORTCULLIS_CONFIG_TEST_NEVER_SET=... with the HS256 secret before starting Portcullis"
        )
    );
    let text = base_with(
        "algorithms = [\"RS256\"]\njwks_file = \"../jwt/jwks.json\"",
        "algorithms = [\"HS256\"]",
    );
    assert_one(&text, "algorithms", "HS algorithms need `secret_env`");
}

#[test]
fn jwks_file_errors_point_at_the_key() {
    let text = base_with("../jwt/jwks.json", "missing-jwks.json");
    let e = assert_one(&text, "missing-jwks.json", "cannot read JWKS file");
    assert!(e.help.unwrap().contains("relative to the directory"));
}

#[test]
fn upstream_targets() {
    let text = base_with("[\"127.0.0.1:3000\"]", "[\"http://127.0.0.1:3000\"]");
    let e = assert_one(
        &text,
        "http://",
        "upstream target `http://127.0.0.1:3000` must be `host:port`",
    );
    assert_eq!(e.help.as_deref(), Some("write `127.0.0.1:3000`"));
    let text = base_with("[\"127.0.0.1:3000\"]", "[\"127.0.0.1\"]");
    assert_one(
        &text,
        "targets",
        "upstream target `127.0.0.1` is not `host:port`",
    );
    let text = base_with("[\"127.0.0.1:3000\"]", "[]");
    assert_one(&text, "targets", "upstream `api` has no targets");
}

#[test]
fn audit_sinks_and_formats() {
    let text = format!(
        "{BASE}\n[[audit.sinks]]\ntype = \"syslog\"\naddress = \"siem:6514\"\ntransport = \"tcp\"\nformat = \"cef\"\nfacility = \"local3\"\n"
    );
    let s = load_str(&text, &inline_path()).unwrap_or_else(|e| panic!("{e}"));
    let sink = &s.audit.sinks[0];
    assert_eq!(sink.name, "syslog-0");
    assert_eq!(sink.format, AuditFormat::Cef);
    let SinkKind::Syslog {
        transport,
        facility,
        sd_id,
        ..
    } = &sink.kind
    else {
        panic!("{sink:?}")
    };
    assert_eq!((*transport, *facility), (SyslogTransport::Tcp, 19));
    assert_eq!(sd_id, "portcullis@32473");
    let text = format!(
        "{BASE}\n[[audit.sinks]]\ntype = \"splunk_hec\"\nname = \"splunk\"\nurl = \"https://splunk:8088/\"\ntoken_env = \"HEC_TOKEN\"\nbatch_size = 100\nbatch_wait = \"1s\"\n\n[[audit.sinks]]\ntype = \"elasticsearch\"\nurl = \"http://es:9200\"\nformat = \"ecs\"\n\n[[audit.sinks]]\ntype = \"http\"\nurl = \"http://vector:8080/audit\"\nheaders = {{ \"X-Source\" = \"gw\" }}\nformat = \"ocsf\"\n"
    );
    let s = load_str(&text, &inline_path()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.audit.sinks.len(), 3);
    assert_eq!(s.audit.sinks[0].batch_size, 100);
    assert!(
        matches!(&s.audit.sinks[0].kind, SinkKind::SplunkHec { url, token: SecretSource::Env(t), .. } if url == "https://splunk:8088" && t == "HEC_TOKEN")
    );
    assert!(
        matches!(&s.audit.sinks[2].kind, SinkKind::Http { headers, .. } if headers == &[("X-Source".to_owned(), "gw".to_owned())])
    );

    let text =
        format!("{BASE}\n[[audit.sinks]]\ntype = \"splunk_hec\"\nurl = \"https://splunk:8088\"\n");
    assert_one(&text, "[[audit.sinks]]", "audit sink has no `token_env`");
    let text = format!(
        "{BASE}\n[[audit.sinks]]\ntype = \"elasticsearch\"\nurl = \"http://es:9200\"\nformat = \"cef\"\n"
    );
    assert_one(&text, "cef", "`_bulk` documents must be JSON objects");
    let text = format!(
        "{BASE}\n[[audit.sinks]]\ntype = \"syslog\"\naddress = \"siem:6514\"\ntransport = \"udpp\"\n"
    );
    let e = assert_one(&text, "udpp", "invalid `transport` value `udpp`");
    assert_eq!(e.help.as_deref(), Some("did you mean `udp`?"));
    let text = format!(
        "{BASE}\n[[audit.sinks]]\ntype = \"syslog\"\naddress = \"siem:6514\"\ntoken_env = \"X\"\n"
    );
    assert_one(
        &text,
        "token_env",
        "unknown field `token_env` for sink type `syslog`",
    );
    let text =
        format!("{BASE}\n[[audit.sinks]]\ntype = \"file\"\npath = \"a.log\"\nformat = \"cfe\"\n");
    let e = assert_one(&text, "cfe", "unknown audit format `cfe`");
    assert_eq!(e.help.as_deref(), Some("did you mean `cef`?"));
    let text = format!(
        "{BASE}\n[[audit.sinks]]\ntype = \"file\"\npath = \"a\"\nname = \"x\"\n[[audit.sinks]]\ntype = \"stdout\"\nname = \"x\"\n"
    );
    assert_one(
        &text,
        "[[audit.sinks]]\ntype = \"stdout\"",
        "two audit sinks are named `x`",
    );
    let text = format!("{BASE}\n[[audit.sinks]]\ntype = \"stdot\"\n");
    let e = assert_one(&text, "stdot", "unknown audit sink type `stdot`");
    assert_eq!(e.help.as_deref(), Some("did you mean `stdout`?"));
    let text = format!("{BASE}\n[[audit.sinks]]\ntype = \"file\"\n");
    assert_one(&text, "[[audit.sinks]]", "audit sink has no `path`");
    let text = format!("{BASE}\n[audit]\nallow_events = \"sample:2\"\n");
    assert_one(&text, "allow_events", "invalid sample rate in `sample:2`");
    let text = format!("{BASE}\n[audit.spool]\ndir = \"s\"\nfsync = \"sometimes\"\n");
    assert_one(&text, "sometimes", "invalid `fsync` value `sometimes`");
}

#[test]
fn header_identity_is_validated() {
    let section = "[identity]\nkinds = [\"jwt\", \"header\"]\n[identity.header]\nsubject = \"x-auth-user\"\ntenant = \"x-auth-tenant\"\n";
    let text = format!("{BASE}\n{section}trusted_peers = [\"10.0.0.0/8\", \"::1\"]\n");
    let h = ok(&text).identity.header.unwrap();
    assert!(h.trusts("10.1.2.3".parse().unwrap(), None));
    assert!(h.trusts("::1".parse().unwrap(), None));
    assert!(!h.trusts("11.0.0.1".parse().unwrap(), None));
    let text = format!("{BASE}\n{section}trusted_peers = [\"10.0.0.0/33\"]\n");
    assert_one(&text, "10.0.0.0/33", "invalid CIDR `10.0.0.0/33`");
    let text = format!("{BASE}\n{section}");
    assert_one(
        &text,
        "[identity.header]",
        "`[identity.header]` trusts nobody",
    );
    let text = format!(
        "{BASE}\n[identity.header]\nsubject = \"a\"\ntenant = \"b\"\ntrusted_peers = [\"10.0.0.1\"]\n"
    );
    assert_one(
        &text,
        "[identity.header]",
        "`[identity.header]` is set but `header` is not in `kinds`",
    );
    let text = format!("{BASE}\n{section}trusted_peer = [\"10.0.0.1\"]\n");
    assert_one(&text, "trusted_peer ", "unknown field `trusted_peer`");
}

#[test]
fn operations_keys_are_validated() {
    let route = "[[routes]]\nmethods = [\"POST\"]\npath = \"/ws\"\npermission = \"items.view\"\nupstream = \"api\"\n";
    let text = format!("{BASE}\n{route}websocket = true\n");
    assert_one(
        &text,
        "websocket = true",
        "websocket route `POST /ws` does not allow `GET`",
    );
    let text = format!("{BASE}\n{route}websocket_max_lifetime = \"1m\"\n");
    assert_one(
        &text,
        "websocket_max_lifetime",
        "`websocket_max_lifetime` on route `POST /ws`",
    );
    let ws = route.replace("POST", "GET");
    let s = ok(&format!(
        "{BASE}\n{ws}websocket = true\nwebsocket_max_lifetime = \"1m\"\n"
    ));
    let entry = s.route_entries.last().unwrap();
    assert!(entry.websocket);
    assert_eq!(entry.websocket_max_lifetime, Some(Duration::from_secs(60)));
    let text = format!("{BASE}\n[log]\nformat = \"jsn\"\n");
    assert_one(&text, "jsn", "invalid `format` value `jsn`");
    let text = format!("{BASE}\n[log]\nacces_log = false\n");
    assert_one(&text, "acces_log", "unknown field `acces_log`");
    let s = ok(&format!(
        "{BASE}\n[log]\nformat = \"json\"\naccess_log = false\n"
    ));
    assert_eq!(s.log.format, crate::config::LogFormat::Json);
    assert!(!s.log.access_log);
    let text = BASE.replace(
        "listen = \"127.0.0.1:8080\"",
        "listen = \"127.0.0.1:8080\"\nadmin_token_env = \"PORTCULLIS_SURELY_UNSET_TOKEN\"",
    );
    assert_one(
        &text,
        "admin_token_env",
        "environment variable `PORTCULLIS_SURELY_UNSET_TOKEN` is not set",
    );
    let text = BASE.replace(
        "jwks_file = \"../jwt/jwks.json\"",
        "jwks_url = \"ftp://idp/keys\"",
    );
    assert_one(&text, "jwks_url", "invalid `jwks_url` `ftp://idp/keys`");
    let text = BASE.replace(
        "jwks_file = \"../jwt/jwks.json\"",
        "jwks_url = \"https://idp.example.com/jwks.json\"\njwks_min_refresh_interval = \"1s\"",
    );
    let jwks = ok(&text).jwt.jwks_url.unwrap();
    assert_eq!(jwks.min_interval, Duration::from_secs(1));
    assert_eq!(jwks.refresh, Duration::from_secs(300));
    // Same text, same hash; a different text, another.
    assert_eq!(ok(BASE).sha256, ok(BASE).sha256);
    assert_ne!(ok(BASE).sha256, ok(&format!("{BASE}\n")).sha256);
}

// === includes ===

#[test]
fn include_errors_name_the_included_file() {
    let text = format!("include = [\"bad_include.toml\"]\n{BASE}");
    let e = one_error(&text);
    assert_eq!(e.file, dir().join("bad_include.toml"));
    assert_eq!(e.line, 6);
    assert_eq!(
        e.message,
        "unknown upstream `reporting` in route `GET /api/reports`"
    );
    assert!(
        e.rendered.contains("bad_include.toml:6:12"),
        "{}",
        e.rendered
    );
}

#[test]
fn include_may_hold_only_routes_roles_aliases() {
    let text = format!("include = [\"forbidden_include.toml\"]\n{BASE}");
    let e = one_error(&text);
    assert_eq!(e.file, dir().join("forbidden_include.toml"));
    assert_eq!(e.line, 7);
    assert!(
        e.message.starts_with("unknown field `upstreams`"),
        "{}",
        e.rendered
    );
    assert!(e.help.unwrap().contains("only `[[routes]]`"));
}

#[test]
fn duplicate_route_across_files_names_both_files() {
    let text = format!("include = [\"dup_include.toml\"]\n{BASE}");
    let errs = errors(&text);
    assert_eq!(errs.len(), 2, "{}", render(&errs));
    assert_eq!(errs[0].file, inline_path());
    assert_eq!(errs[1].file, dir().join("dup_include.toml"));
    assert_eq!(errs[1].line, 3);
    let main_line = line_of(&text, "path = ");
    assert!(
        errs[1]
            .message
            .contains(&format!("inline.toml:{main_line}:")),
        "{}",
        errs[1].message
    );
    assert!(
        errs[0].message.contains("dup_include.toml:3:"),
        "{}",
        errs[0].message
    );
}

#[test]
fn missing_include_points_at_the_entry() {
    let text = format!("include = [\"nope.toml\"]\n{BASE}");
    assert_one(&text, "nope.toml", "cannot read included file");
}

#[test]
fn missing_main_file() {
    let err = load(&dir().join("does-not-exist.toml")).err().unwrap();
    assert_eq!(err.errors.len(), 1);
    assert_eq!(err.errors[0].line, 0);
    assert!(err.errors[0].message.starts_with("cannot read config file"));
}

#[test]
fn assignment_roles_checked_even_when_roles_do_not_compile() {
    let text = format!(
        "{BASE}\n[roles.editor]\ninherits = [\"ghost\"]\n[[assignments]]\ntenant = \"acme\"\nsubject = \"alice\"\nroles = [\"admin\"]\n"
    );
    let errs = errors(&text);
    assert_eq!(errs.len(), 2, "{}", render(&errs));
    assert_eq!(errs[0].line, line_of(&text, "\"ghost\""));
    assert_eq!(errs[1].line, line_of(&text, "\"admin\""));
    assert_eq!(errs[1].message, "unknown role `admin` grants nothing");
}

#[test]
fn hs256_secret_from_the_environment() {
    // `std::env::set_var` is unsafe in edition 2024 and the crate forbids unsafe code, so use a
    // variable cargo always sets for test processes; its value serves as the secret.
    let text = base_with(
        "algorithms = [\"RS256\"]\njwks_file = \"../jwt/jwks.json\"",
        "algorithms = [\"HS256\"]\nsecret_env = \"CARGO_MANIFEST_DIR\"",
    );
    let s = ok(&text);
    assert_eq!(s.jwt.secret_env.as_deref(), Some("CARGO_MANIFEST_DIR"));
    assert_eq!(s.jwt.jwks_file, None);
    let token = s
        .authenticator
        .mint_hs256(&serde_json::json!({"iss": "https://idp.example.com/", "sub": "alice", "tenant": "acme", "exp": 4_000_000_000u64}))
        .unwrap();
    let who = s
        .authenticator
        .authenticate(
            Some(format!("Bearer {token}").as_bytes()),
            None,
            1_700_000_000,
        )
        .unwrap();
    assert_eq!(
        (who.tenant.as_str(), who.subject.as_str()),
        ("acme", "alice")
    );
}

// === edge: [server] tls, [upstreams.*] pool keys, [limits], [cors] ===

fn with_tls(tls: &str) -> String {
    base_with(
        "listen = \"127.0.0.1:8080\"",
        &format!("listen = \"127.0.0.1:8080\"\ntls = {tls}"),
    )
}

#[test]
fn tls_files_are_checked_at_load() {
    let text = with_tls("{ cert = \"missing.pem\", key = \"missing.key\" }");
    let e = assert_one(&text, "tls = ", "cannot read certificates from `");
    assert!(e.message.contains("missing.pem"), "{}", e.rendered);
    let text = with_tls("{ cert = \"a.pem\" }");
    assert_one(&text, "tls = ", "`tls` needs both `cert` and `key`");
    let text =
        with_tls("{ cert = \"a\", key = \"b\", client_ca = \"c\", client_auth = \"maybe\" }");
    let errs = errors(&text);
    assert!(
        errs.iter()
            .any(|e| e.message
                == "invalid `client_auth` value `maybe`; expected `optional`, `required`"),
        "{}",
        render(&errs)
    );
}

#[test]
fn tls_loads_generated_cert_relative_to_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::write(dir.path().join("c.pem"), cert.pem()).unwrap();
    std::fs::write(dir.path().join("k.pem"), key.serialize_pem()).unwrap();
    let text = with_tls("{ cert = \"c.pem\", key = \"k.pem\", client_ca = \"c.pem\" }").replace(
        "jwks_file = \"../jwt/jwks.json\"",
        &format!("jwks_file = \"{}\"", dir_path_jwks()),
    );
    let snap = load_str(&text, &dir.path().join("gw.toml")).unwrap_or_else(|e| panic!("{e}"));
    let tls = snap.server.tls.unwrap();
    assert_eq!(tls.cert, dir.path().join("c.pem"));
    assert_eq!(
        tls.client_auth,
        Some((dir.path().join("c.pem"), ClientAuth::Required))
    );
    assert_eq!(tls.watch_interval, Duration::from_secs(5));
    // The key of another certificate is refused.
    let other = rcgen::KeyPair::generate().unwrap();
    std::fs::write(dir.path().join("k.pem"), other.serialize_pem()).unwrap();
    let Err(e) = load_str(&text, &dir.path().join("gw.toml")) else {
        panic!("a mismatched key must not load");
    };
    assert!(
        e.errors[0].message.contains("does not fit the certificate"),
        "{e}"
    );
}

fn dir_path_jwks() -> String {
    dir().join("../jwt/jwks.json").display().to_string()
}

#[test]
fn upstream_pool_keys() {
    let snap = ok(&base_with(
        "targets = ",
        "max_failures = 2\neject_for = \"5s\"\nidle_timeout = \"1m\"\nmax_connections = 8\nprotocol = \"http2\"\ntargets = ",
    ));
    let up = &snap.upstreams[0];
    assert_eq!(up.max_failures, 2);
    assert_eq!(up.eject_for, Duration::from_secs(5));
    assert_eq!(up.idle_timeout, Duration::from_secs(60));
    assert_eq!(up.max_connections, Some(8));
    assert_eq!(up.protocol, UpstreamProtocol::Http2);
    assert_eq!(up.tls, None);
    let snap = ok(&base_with("targets = ", "tls = true\ntargets = "));
    assert_eq!(snap.upstreams[0].tls, Some(None));
    let defaults = &ok(BASE).upstreams[0];
    assert_eq!((defaults.max_failures, defaults.max_connections), (3, None));
    assert_eq!(defaults.protocol, UpstreamProtocol::Http1);

    let text = base_with("targets = ", "protocol = \"h2\"\ntargets = ");
    assert_one(&text, "protocol", "invalid `protocol` value `h2`");
    let text = base_with("targets = ", "ca = \"ca.pem\"\ntargets = ");
    assert_one(&text, "ca = ", "`ca` is set but `tls` is not enabled");
    let text = base_with("targets = ", "max_connections = 0\ntargets = ");
    assert_one(
        &text,
        "max_connections",
        "`max_connections` must be between 1 and",
    );
}

#[test]
fn limits_section() {
    let snap = ok(BASE);
    assert_eq!(snap.limits, LimitsSettings::default());
    assert_eq!(snap.limits.max_body, 10 << 20);
    let snap = ok(&format!(
        "{BASE}\n[limits]\nheader_read_timeout = \"2s\"\nmax_header_bytes = \"16KiB\"\nmax_headers = 50\nmax_uri_length = \"2KiB\"\nmax_body = \"1MiB\"\nmax_connections = 100\nmax_requests_per_connection = 10\nshutdown_timeout = \"5s\"\n"
    ));
    assert_eq!(
        snap.limits,
        LimitsSettings {
            header_read_timeout: Duration::from_secs(2),
            max_header_bytes: 16 << 10,
            max_headers: 50,
            max_uri_length: 2 << 10,
            max_body: 1 << 20,
            max_connections: 100,
            max_requests_per_connection: Some(10),
            shutdown_timeout: Duration::from_secs(5),
            websocket_max_lifetime: Duration::from_secs(3600),
        }
    );
    let text = format!("{BASE}\n[limits]\nmax_header_bytes = \"1KiB\"\n");
    assert_one(
        &text,
        "max_header_bytes",
        "`max_header_bytes` must be at least 8192 bytes",
    );
    let text = format!("{BASE}\n[limits]\nmax_body = \"ten\"\n");
    assert_one(&text, "max_body", "invalid size `ten`");
}

#[test]
fn cors_section() {
    assert!(ok(BASE).cors.is_none());
    let snap = ok(&format!(
        "{BASE}\n[cors]\nallow_origins = [\"https://App.example.com\"]\nallow_credentials = true\nmax_age = \"10m\"\nexpose_headers = [\"x-request-id\"]\n"
    ));
    let cors = snap.cors.unwrap();
    assert_eq!(
        cors.allow_origins,
        AllowOrigins::List(vec!["https://app.example.com".into()])
    );
    assert!(cors.allow_credentials);
    assert_eq!(cors.max_age, Some(Duration::from_secs(600)));
    assert_eq!(cors.allow_headers.len(), 2);

    let text = format!("{BASE}\n[cors]\nallow_origins = \"*\"\nallow_credentials = true\n");
    let e = assert_one(
        &text,
        "allow_credentials",
        "`allow_credentials = true` cannot be combined with `allow_origins = \"*\"`",
    );
    assert_eq!(
        e.help.as_deref(),
        Some("list the trusted origins in `allow_origins`")
    );
    let text = format!("{BASE}\n[cors]\nallow_origins = [\"https://a.example/path\"]\n");
    assert_one(
        &text,
        "allow_origins",
        "invalid origin `https://a.example/path`",
    );
    let text = format!("{BASE}\n[cors]\nallow_methods = [\"GET\"]\n");
    assert_one(&text, "[cors]", "missing `allow_origins` in `[cors]`");
}

/// `[grants.redis]` with `sentinels` in place of `url`.
fn sentinel_base(redis_section: &str) -> String {
    base_with(
        "[grants]\nstore = \"file\"\n",
        &format!("[grants]\nstore = \"redis\"\n[grants.redis]\n{redis_section}"),
    )
}

#[test]
fn redis_sentinel_settings() {
    let s = ok(&sentinel_base(
        "sentinels = [\"10.0.0.1:26379\", \"redis://:pw@10.0.0.2:26379\"]\nmaster_name = \"mymaster\"\ndb = 2\n",
    ));
    let StoreSettings::Redis(r) = &s.grants.store else {
        panic!("redis expected")
    };
    let RedisTarget::Sentinel(t) = &r.target else {
        panic!("sentinel expected: {:?}", r.target)
    };
    assert_eq!(
        t.sentinels,
        vec![
            "redis://10.0.0.1:26379".to_owned(),
            "redis://:pw@10.0.0.2:26379".to_owned()
        ]
    );
    assert_eq!(
        (t.master_name.as_str(), t.db, t.tls),
        ("mymaster", 2, false)
    );
    // Sentinel passwords never show in Debug.
    assert!(!format!("{:?}", s.grants.store).contains("pw@"));
    // TLS sentinels: TLS to the master too; `db` defaults to 0.
    let s = ok(&sentinel_base(
        "sentinels = [\"rediss://s1:26379\", \"rediss://s2:26379\"]\nmaster_name = \"m\"\n",
    ));
    let StoreSettings::Redis(r) = &s.grants.store else {
        panic!("redis expected")
    };
    assert!(matches!(&r.target, RedisTarget::Sentinel(t) if t.tls && t.db == 0));
}

#[test]
fn redis_sentinel_errors_point_at_the_key() {
    // `url` and `sentinels` together: the error is on `sentinels` and names the url's line.
    let text = sentinel_base(
        "url = \"redis://127.0.0.1:6379/0\"\nsentinels = [\"127.0.0.1:26379\"]\nmaster_name = \"m\"\n",
    );
    let e = assert_one(&text, "sentinels = [", "`url` (at ");
    assert!(e.message.contains("mutually exclusive"), "{}", e.message);
    assert!(
        e.message
            .contains(&format!(":{}", line_of(&text, "url = \"redis://"))),
        "{}",
        e.message
    );
    // Neither.
    let text = sentinel_base("prefix = \"x\"\n");
    assert_one(
        &text,
        "[grants.redis]",
        "missing `url` (or `sentinels`) in `[grants.redis]`",
    );
    // Sentinels without a master name.
    let text = sentinel_base("sentinels = [\"127.0.0.1:26379\"]\n");
    assert_one(&text, "[grants.redis]", "`sentinels` needs `master_name`");
    // Empty list, bad entries, mixed TLS, bad db, bad name.
    let text = sentinel_base("sentinels = []\nmaster_name = \"m\"\n");
    assert_one(&text, "sentinels = []", "`sentinels` is empty");
    let text = sentinel_base(
        "sentinels = [\"127.0.0.1:26379\", \"http://u:secret@x:1\"]\nmaster_name = \"m\"\n",
    );
    let e = assert_one(&text, "sentinels = [", "invalid sentinel address");
    assert_eq!(e.key, "grants.redis.sentinels[1]");
    assert!(!e.message.contains("secret"));
    let text = sentinel_base("sentinels = [\"127.0.0.1:99999\"]\nmaster_name = \"m\"\n");
    assert_one(&text, "sentinels = [", "invalid sentinel address");
    let text = sentinel_base(
        "sentinels = [\"rediss://a:26379\", \"redis://b:26379\"]\nmaster_name = \"m\"\n",
    );
    assert_one(&text, "sentinels = [", "some sentinels use TLS");
    let text = sentinel_base("sentinels = [\"a:26379\"]\nmaster_name = \"m\"\ndb = -1\n");
    assert_one(&text, "db = -1", "`db` must be a database number");
    let text = sentinel_base("sentinels = [\"a:26379\"]\nmaster_name = \"my master\"\n");
    assert_one(&text, "master_name = ", "invalid master name");
    // Sentinel-only keys next to `url`.
    let text = sentinel_base("url = \"redis://127.0.0.1:6379/0\"\ndb = 1\n");
    let e = assert_one(&text, "db = 1", "`db` belongs to a Sentinel setup");
    assert!(
        e.help
            .as_deref()
            .unwrap_or("")
            .contains("redis://host:6379/2")
    );
    let text = sentinel_base("url = \"redis://127.0.0.1:6379/0\"\nmaster_name = \"m\"\n");
    assert_one(
        &text,
        "master_name",
        "`master_name` belongs to a Sentinel setup",
    );
}
