use super::*;
use scenarios::{Scenario, task};
use taskrouter_proto::v1::{ApprovalGate, RejectAction, TimeoutAction};

fn engine() -> PolicyEngine {
    PolicyEngine::builtin().unwrap()
}

fn engine_with(toml: &str) -> PolicyEngine {
    PolicyEngine::from_toml(toml, "test").unwrap()
}

fn simple(description: &str) -> Task {
    task("T-1", description, Complexity::Low, 10.0, &[], &[])
}

fn codes(a: &RoutingAnalysis) -> Vec<ReasonCode> {
    a.reasons
        .iter()
        .map(|r| ReasonCode::try_from(r.code).unwrap())
        .collect()
}

fn is_multi(a: &RoutingAnalysis) -> bool {
    a.decision == RoutingDecision::UseMultiAgent as i32
}

// The plan's scenarios (defined once, in the scenarios crate).

#[test]
fn every_plan_scenario_routes_as_the_plan_expects() {
    for s in scenarios::plan() {
        let a = engine().evaluate(&s.task);
        assert_eq!(
            a.decision, s.expect.decision as i32,
            "{}: {:?}",
            s.name, a.reasons
        );
        let got = codes(&a);
        for want in &s.expect.reasons {
            assert!(
                got.contains(want),
                "{}: {want:?} missing from {got:?}",
                s.name
            );
        }
    }
}

#[test]
fn readme_typo_at_ten_dollars_stays_single() {
    let a = engine().evaluate(&Scenario::by_id("TEST-BUG-001").task);
    assert!(!is_multi(&a));
    assert_eq!(codes(&a), vec![ReasonCode::SimpleTask]);
    assert!(!a.multi_agent_recommended);
    assert!(a.suggested_roles.is_empty());
    assert_eq!(a.score, 0.0);
}

#[test]
fn high_value_high_complexity_payment_feature_goes_multi() {
    let a = engine().evaluate(&Scenario::by_id("TEST-FEATURE-001").task);
    assert!(is_multi(&a));
    assert_eq!(
        codes(&a),
        vec![ReasonCode::HighComplexity, ReasonCode::HighValue]
    );
    assert_eq!(a.score, WEIGHT_HIGH_COMPLEXITY + WEIGHT_HIGH_VALUE);
    assert_eq!(a.suggested_roles, ["implementer", "architect", "reviewer"]);
}

#[test]
fn hipaa_credential_rotation_goes_multi() {
    let a = engine().evaluate(&Scenario::by_id("TEST-HIPAA-001").task);
    assert!(is_multi(&a));
    assert_eq!(codes(&a), vec![ReasonCode::ComplianceSensitive]);
    assert!(
        a.reasons[0].message.contains("\"hipaa\""),
        "{:?}",
        a.reasons
    );
    assert_eq!(a.suggested_roles, ["implementer", "security-reviewer"]);
}

#[test]
fn production_deployment_goes_multi() {
    let a = engine().evaluate(&Scenario::by_id("TEST-DEPLOY-001").task);
    assert!(is_multi(&a));
    assert_eq!(codes(&a), vec![ReasonCode::Deployment]);
    assert_eq!(a.suggested_roles, ["implementer", "release-engineer"]);
}

#[test]
fn refactor_across_two_repositories_goes_multi() {
    let a = engine().evaluate(&Scenario::by_id("TEST-XREPO-001").task);
    assert!(is_multi(&a));
    assert_eq!(codes(&a), vec![ReasonCode::CrossRepo]);
    assert_eq!(
        a.suggested_roles,
        ["implementer", "repo:acme/api", "repo:acme/web"]
    );
}

// One test per rule.

#[test]
fn critical_complexity_alone_goes_multi_with_an_architect() {
    let a = engine().evaluate(&task("T", "Tidy up", Complexity::Critical, 0.0, &[], &[]));
    assert!(is_multi(&a));
    assert_eq!(codes(&a), vec![ReasonCode::HighComplexity]);
    assert_eq!(a.reasons[0].message, "complexity is CRITICAL");
    assert_eq!(a.score, WEIGHT_CRITICAL_COMPLEXITY);
    assert_eq!(a.suggested_roles, ["implementer", "architect"]);
}

#[test]
fn medium_complexity_alone_stays_single() {
    let a = engine().evaluate(&task("T", "Tidy up", Complexity::Medium, 0.0, &[], &[]));
    assert!(!is_multi(&a));
}

#[test]
fn value_at_the_threshold_goes_multi_and_just_below_stays_single() {
    let e = engine();
    let at = e.evaluate(&task("T", "Tidy up", Complexity::Low, 100.0, &[], &[]));
    assert_eq!(codes(&at), vec![ReasonCode::HighValue]);
    assert!(at.reasons[0].message.contains("$100.00"));
    let below = e.evaluate(&task("T", "Tidy up", Complexity::Low, 99.99, &[], &[]));
    assert!(!is_multi(&below));
}

#[test]
fn a_compliance_keyword_goes_multi() {
    let a = engine().evaluate(&simple("Scrub PII from the export"));
    assert_eq!(codes(&a), vec![ReasonCode::ComplianceSensitive]);
}

#[test]
fn a_deployment_keyword_goes_multi() {
    let a = engine().evaluate(&simple("Write the kubernetes manifests"));
    assert_eq!(codes(&a), vec![ReasonCode::Deployment]);
    assert!(a.reasons[0].message.contains("\"kubernetes\""));
}

#[test]
fn cross_repo_wording_goes_multi_without_repositories() {
    let a = engine().evaluate(&simple("Bump the logger across repositories"));
    assert_eq!(codes(&a), vec![ReasonCode::CrossRepo]);
    assert!(a.reasons[0].message.contains("\"across repositories\""));
}

#[test]
fn one_repository_listed_twice_is_not_cross_repo() {
    let mut t = simple("Tidy up");
    t.repositories = vec!["org/a".into(), " org/a ".into()];
    assert!(!is_multi(&engine().evaluate(&t)));
}

#[test]
fn repository_roles_are_capped() {
    let mut t = simple("Tidy up");
    t.repositories = (0..20).map(|i| format!("org/r{i}")).collect();
    let a = engine().evaluate(&t);
    let repo_roles = a
        .suggested_roles
        .iter()
        .filter(|r| r.starts_with("repo:"))
        .count();
    assert_eq!(repo_roles, MAX_REPO_ROLES);
    assert!(a.reasons[0].message.contains("20 repositories"));
}

#[test]
fn every_fired_rule_is_a_reason_in_evaluation_order() {
    let mut t = task(
        "T",
        "Deploy PHI export to prod",
        Complexity::High,
        1000.0,
        &[],
        &[],
    );
    t.repositories = vec!["a".into(), "b".into()];
    let a = engine().evaluate(&t);
    assert_eq!(
        codes(&a),
        vec![
            ReasonCode::HighComplexity,
            ReasonCode::HighValue,
            ReasonCode::ComplianceSensitive,
            ReasonCode::Deployment,
            ReasonCode::CrossRepo,
        ]
    );
    assert_eq!(a.score, 11.0);
    assert_eq!(a.confidence, 1.0);
    assert_eq!(
        a.suggested_roles,
        [
            "implementer",
            "architect",
            "reviewer",
            "security-reviewer",
            "release-engineer",
            "repo:a",
            "repo:b"
        ]
    );
}

// Keyword matching.

#[test]
fn phishing_does_not_fire_phi_but_phi_and_uppercase_phi_do() {
    let e = engine();
    assert!(!is_multi(&e.evaluate(&simple("Block phishing links"))));
    assert!(is_multi(&e.evaluate(&simple("Mask PHI in logs"))));
    assert!(is_multi(&e.evaluate(&simple("mask phi in logs"))));
}

#[test]
fn keywords_match_case_insensitively() {
    let a = engine().evaluate(&simple("Move the GDPR banner"));
    assert_eq!(codes(&a), vec![ReasonCode::ComplianceSensitive]);
    assert!(a.reasons[0].message.contains("\"gdpr\""));
}

#[test]
fn multi_word_keywords_match_as_a_phrase() {
    let e = engine();
    let a = e.evaluate(&simple("Rotate the Stripe API key"));
    assert_eq!(codes(&a), vec![ReasonCode::ComplianceSensitive]);
    assert!(a.reasons[0].message.contains("\"api key\""));
    assert!(!is_multi(
        &e.evaluate(&simple("Document the API, key points first"))
    ));
}

#[test]
fn deploy_does_not_fire_inside_other_words() {
    let e = engine();
    assert!(!is_multi(
        &e.evaluate(&simple("Make the widget redeployable"))
    ));
    assert!(!is_multi(&e.evaluate(&simple("Fix the product page"))));
    let a = e.evaluate(&simple("Document the deployment"));
    assert!(a.reasons[0].message.contains("\"deployment\""));
}

#[test]
fn reasons_never_quote_the_description() {
    let secret = "Rotate credentials for patient 123-45-6789 in prod";
    let a = engine().evaluate(&simple(secret));
    for r in &a.reasons {
        assert!(!r.message.contains("123-45-6789"), "{}", r.message);
        assert!(!r.message.contains("Rotate"), "{}", r.message);
    }
}

// Kill switch, rollout and fallback.

#[test]
fn the_kill_switch_forces_single_but_keeps_the_recommendation() {
    let e = engine_with("[multi_agent]\nenabled = false\n");
    let a = e.evaluate(&task("T", "Deploy it", Complexity::Critical, 1e6, &[], &[]));
    assert!(!is_multi(&a));
    assert!(a.multi_agent_recommended);
    assert_eq!(codes(&a).last(), Some(&ReasonCode::MultiAgentDisabled));
    assert!(a.suggested_roles.is_empty());
    assert!(a.score > 0.0);
}

#[test]
fn the_kill_switch_does_not_touch_simple_tasks() {
    let e = engine_with("[multi_agent]\nenabled = false\n");
    let a = e.evaluate(&simple("Fix typo"));
    assert_eq!(codes(&a), vec![ReasonCode::SimpleTask]);
}

#[test]
fn tasks_above_the_rollout_percent_go_single() {
    // Bucket of "TEST-FEATURE-001" in group multi_agent is 95.
    let t = task("TEST-FEATURE-001", "x", Complexity::High, 0.0, &[], &[]);
    let out = engine_with("[multi_agent]\nrollout_percent = 94\n").evaluate(&t);
    assert_eq!(out.rollout_bucket, 95);
    assert!(!is_multi(&out));
    assert!(out.multi_agent_recommended);
    assert_eq!(codes(&out).last(), Some(&ReasonCode::OutsideRollout));
    assert!(out.reasons.last().unwrap().message.contains("95"));
    let inside = engine_with("[multi_agent]\nrollout_percent = 95\n").evaluate(&t);
    assert!(is_multi(&inside));
}

#[test]
fn zero_percent_rollout_keeps_everyone_single() {
    let e = engine_with("[multi_agent]\nrollout_percent = 0\n");
    for i in 0..200 {
        let a = e.evaluate(&task(
            &format!("t{i}"),
            "x",
            Complexity::High,
            0.0,
            &[],
            &[],
        ));
        assert!(!is_multi(&a));
    }
}

#[test]
fn the_rollout_bucket_is_always_filled() {
    let e = engine();
    let a = e.evaluate(&simple("Fix typo"));
    assert_eq!(
        a.rollout_bucket,
        crate::rollout::rollout_bucket("multi_agent", "T-1")
    );
    assert!((1..=100).contains(&a.rollout_bucket));
}

#[test]
fn fallback_is_single_with_the_given_reason() {
    let t = simple("Deploy it to prod");
    let a = fallback_to_single_agent(&t, ReasonCode::RouterUnavailable, "router unreachable");
    assert!(!is_multi(&a));
    assert_eq!(codes(&a), vec![ReasonCode::RouterUnavailable]);
    assert_eq!(a.reasons[0].message, "router unreachable");
    assert_eq!(
        a.rollout_bucket,
        crate::rollout::rollout_bucket("multi_agent", "T-1")
    );
    assert!(a.suggested_roles.is_empty());
    assert_eq!(a.confidence, 1.0);
}

// Scores, confidence and versions.

#[test]
fn confidence_stays_within_zero_and_one() {
    let e = engine();
    for c in [
        Complexity::Low,
        Complexity::Medium,
        Complexity::High,
        Complexity::Critical,
    ] {
        for v in [0.0, 50.0, 99.0, 100.0, 1e12] {
            let a = e.evaluate(&task("T", "deploy PHI", c, v, &[], &[]));
            assert!((0.0..=1.0).contains(&a.confidence), "{a:?}");
            let a = e.evaluate(&task("T", "tidy", c, v, &[], &[]));
            assert!((0.0..=1.0).contains(&a.confidence), "{a:?}");
        }
    }
    let low = e.evaluate(&task("T", "tidy", Complexity::Low, 0.0, &[], &[]));
    let near = e.evaluate(&task("T", "tidy", Complexity::Medium, 99.0, &[], &[]));
    assert!(low.confidence > near.confidence);
}

#[test]
fn unvalidated_input_never_panics() {
    let e = engine();
    let mut t = task("", "\u{0}\u{ffff}", Complexity::Low, f64::NAN, &[], &[]);
    t.complexity = 99;
    t.repositories = vec![String::new(), "  ".into()];
    let a = e.evaluate(&t);
    assert!(!is_multi(&a));
    t.estimated_value_usd = f64::INFINITY;
    assert!(!is_multi(&e.evaluate(&t)));
}

#[test]
fn the_version_is_a_hash_of_the_policy_text() {
    let a = engine_with("[rules]\nvalue_threshold_usd = 5.0\n");
    let b = engine_with("[rules]\nvalue_threshold_usd = 6.0\n");
    assert_ne!(a.version(), b.version());
    assert_eq!(a.version().len(), 16);
    assert_eq!(
        engine().version(),
        policy_version(BUILTIN_POLICY_TOML.as_bytes())
    );
    assert_eq!(a.evaluate(&simple("x")).policy_version, a.version());
}

#[test]
fn get_policy_message_mirrors_the_settings() {
    let p = engine_with("[multi_agent]\nrollout_percent = 25\nrollout_group = \"g\"\n").to_proto();
    assert_eq!(p.rollout_percent, 25);
    assert_eq!(p.rollout_group, "g");
    assert!(p.multi_agent_enabled);
    assert_eq!(p.fallback_decision, RoutingDecision::UseSingleAgent as i32);
    assert_eq!(p.max_description_bytes, 1024 * 1024);
    assert!(p.compliance_keywords.contains(&"hipaa".to_string()));
}

#[test]
fn an_engine_rebuilt_from_get_policy_decides_like_the_original() {
    let text = "[multi_agent]\nrollout_percent = 40\n[rules]\nvalue_threshold_usd = 250.0\n";
    let original = PolicyEngine::from_toml(text, "t").unwrap();
    let rebuilt = PolicyEngine::from_proto(&original.to_proto(), original.version(), "r").unwrap();
    assert_eq!(rebuilt.settings(), original.settings());
    assert_eq!(rebuilt.version(), original.version());
    for i in 0..50 {
        let task = Task {
            id: format!("T-{i}"),
            description: "deploy the service".into(),
            complexity: Complexity::Low as i32,
            estimated_value_usd: f64::from(i) * 10.0,
            ..Default::default()
        };
        assert_eq!(rebuilt.evaluate(&task), original.evaluate(&task));
    }
}

#[test]
fn get_policy_carries_governance_and_an_engine_rebuilt_from_it_governs_alike() {
    let text = r#"
[budgets]
single_agent_usd = 2.5
multi_agent_usd = 10.0
[tenants]
default_usd_per_day = 50.0
[tenants.usd_per_day]
acme = 5.0
[[approval.rules]]
reason = "DEPLOYMENT"
gate = "before_start"
timeout = "1h"
on_timeout = "reject"
[[approval.rules]]
reason = "REASON_CODE_COMPLIANCE_SENSITIVE"
gate = "before_complete"
timeout = "90s"
on_timeout = "approve"
on_reject = "iterate"
"#;
    let original = PolicyEngine::from_toml(text, "t").unwrap();
    let p = original.to_proto();
    assert_eq!(p.single_agent_budget_usd, 2.5);
    assert_eq!(p.multi_agent_budget_usd, 10.0);
    assert_eq!(p.tenant_default_usd_per_day, 50.0);
    assert_eq!(p.tenant_usd_per_day.get("acme"), Some(&5.0));
    assert_eq!(p.approval_rules.len(), 2);
    let r = &p.approval_rules[1];
    assert_eq!(r.reason, ReasonCode::ComplianceSensitive as i32);
    assert_eq!(r.gate, ApprovalGate::BeforeComplete as i32);
    assert_eq!(r.timeout_seconds, 90);
    assert_eq!(r.on_timeout, TimeoutAction::Approve as i32);
    assert_eq!(r.on_reject, RejectAction::Iterate as i32);
    assert_eq!(p.approval_rules[0].on_reject, RejectAction::Fail as i32);

    let rebuilt = PolicyEngine::from_proto(&p, original.version(), "r").unwrap();
    assert_eq!(
        rebuilt.to_proto(),
        p,
        "GetPolicy -> engine -> GetPolicy is the identity"
    );
    for (i, desc) in [
        "deploy the service",
        "HIPAA audit of the PHI store",
        "deploy the HIPAA fix",
        "fix a typo",
    ]
    .into_iter()
    .enumerate()
    {
        for tenant in [None, Some("acme"), Some("other")] {
            let labels: Vec<(&str, &str)> = tenant.map(|t| ("tenant", t)).into_iter().collect();
            let task = task(&format!("T-{i}"), desc, Complexity::Low, 0.0, &[], &labels);
            let (a, b) = (original.evaluate(&task), rebuilt.evaluate(&task));
            assert_eq!(a, b, "{desc} / {tenant:?}");
        }
    }
    // The governance did reach the analyses (the comparison above is not vacuous).
    let a = rebuilt.evaluate(&task(
        "T-9",
        "deploy the HIPAA fix",
        Complexity::Low,
        0.0,
        &[],
        &[],
    ));
    assert_eq!(a.gates.len(), 2);
    assert_eq!(a.tenant_usd_per_day, 50.0);
}

#[test]
fn a_get_policy_rule_with_an_unknown_gate_names_the_field() {
    let mut p = PolicyEngine::from_toml(
        "[[approval.rules]]\nreason = \"DEPLOYMENT\"\ngate = \"before_start\"\ntimeout = \"1h\"\non_timeout = \"reject\"\n",
        "t",
    )
    .unwrap()
    .to_proto();
    p.approval_rules[0].gate = 0;
    let err = PolicyEngine::from_proto(&p, "v", "router")
        .unwrap_err()
        .to_string();
    assert!(err.contains("approval_rules[0].gate"), "{err}");
    p.approval_rules[0].gate = ApprovalGate::BeforeStart as i32;
    p.approval_rules[0].reason = 999;
    let err = PolicyEngine::from_proto(&p, "v", "router")
        .unwrap_err()
        .to_string();
    assert!(err.contains("approval_rules[0].reason"), "{err}");
}

#[test]
fn a_pair_decides_like_two_separate_evaluations() {
    let live = PolicyEngine::from_toml("[multi_agent]\nrollout_percent = 0\n", "l").unwrap();
    let same_keywords =
        PolicyEngine::from_toml("[rules]\nvalue_threshold_usd = 20.0\n", "s").unwrap();
    let other_keywords =
        PolicyEngine::from_toml("[rules]\ndeployment_keywords = [\"ship\"]\n", "o").unwrap();
    for (i, text) in [
        "deploy to prod",
        "ship it",
        "fix typo",
        "rotate HIPAA secrets",
    ]
    .iter()
    .enumerate()
    {
        let task = Task {
            id: format!("P-{i}"),
            description: (*text).into(),
            complexity: Complexity::Low as i32,
            estimated_value_usd: 30.0,
            ..Default::default()
        };
        for shadow in [&same_keywords, &other_keywords] {
            assert_eq!(
                live.evaluate_pair(shadow, &task),
                (live.evaluate(&task), shadow.evaluate(&task))
            );
        }
    }
}
