//! The policy file format (TOML), its compiled-in defaults and its validation.
//!
//! `router-service/policy.example.toml` documents every key; it is also the built-in
//! policy, so the example cannot drift from what the binary does.

use crate::error::Error;
use serde::Deserialize;

/// The built-in policy, used when no policy file is configured.
pub const BUILTIN_POLICY_TOML: &str = include_str!("../../policy.example.toml");

/// Largest accepted `limits.max_description_bytes` (4 MiB): the gRPC decoder limit is set
/// just above it, so a larger value could never be honoured.
pub const MAX_DESCRIPTION_BYTES_CEILING: u64 = 4 * 1024 * 1024;

/// Largest keyword, in bytes.
pub const MAX_KEYWORD_BYTES: usize = 128;

/// Most keywords in one list; keeps the automaton small and reloads fast.
pub const MAX_KEYWORDS_PER_LIST: usize = 1024;

/// A parsed policy file. Keys left out take the built-in defaults; unknown keys are errors.
#[derive(Clone, Debug, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyFile {
    /// `[multi_agent]`: kill switch and rollout.
    pub multi_agent: MultiAgent,
    /// `[rules]`: when a task takes the team path.
    pub rules: Rules,
    /// `[fallback]`: what the executor does when the team path fails.
    pub fallback: Fallback,
    /// `[limits]`: request size limits.
    pub limits: Limits,
    /// `[budgets]`: a task's default spend budget by decision.
    pub budgets: Budgets,
    /// `[tenants]`: spend limits per tenant and UTC day.
    pub tenants: Tenants,
    /// `[approval]`: gates a person must pass, by reason code.
    pub approval: Approval,
}

/// `[multi_agent]` section.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MultiAgent {
    /// Kill switch: false forces every task onto the single path.
    pub enabled: bool,
    /// Share of rollout buckets admitted to the team path, 0..=100.
    pub rollout_percent: u32,
    /// Group hashed with the task id into the rollout bucket.
    pub rollout_group: String,
}

impl Default for MultiAgent {
    fn default() -> Self {
        Self {
            enabled: true,
            rollout_percent: 100,
            rollout_group: "multi_agent".to_string(),
        }
    }
}

/// `[rules]` section.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Rules {
    /// Value in USD at or above which a task takes the team path.
    pub value_threshold_usd: f64,
    /// Whole-word keywords marking compliance-sensitive work.
    pub compliance_keywords: Vec<String>,
    /// Whole-word keywords marking deployment or production work.
    pub deployment_keywords: Vec<String>,
    /// Whole-word keywords marking cross-repository work.
    pub cross_repo_keywords: Vec<String>,
    /// Distinct repositories at or above which a task is cross-repo.
    pub cross_repo_min_repositories: u32,
}

const DEFAULT_COMPLIANCE: &[&str] = &[
    "hipaa",
    "phi",
    "pii",
    "ephi",
    "gdpr",
    "ccpa",
    "pci",
    "pci-dss",
    "soc2",
    "soc 2",
    "hitrust",
    "ferpa",
    "credential",
    "credentials",
    "secret",
    "secrets",
    "password",
    "passwords",
    "api key",
    "api keys",
    "private key",
    "private keys",
    "access token",
    "access tokens",
    "encryption key",
    "encryption keys",
    "ssn",
    "social security number",
    "patient data",
    "medical record",
    "medical records",
];

const DEFAULT_DEPLOYMENT: &[&str] = &[
    "deploy",
    "deploys",
    "deployed",
    "deploying",
    "deployment",
    "deployments",
    "production",
    "prod",
    "rollout",
    "roll out",
    "kubernetes",
    "k8s",
    "helm",
    "terraform",
    "canary",
    "go-live",
    "go live",
];

const DEFAULT_CROSS_REPO: &[&str] = &[
    "cross-repo",
    "cross repo",
    "cross-repository",
    "cross repository",
    "across repos",
    "across repositories",
    "multiple repos",
    "multiple repositories",
    "multi-repo",
    "several repos",
    "several repositories",
    "monorepo migration",
];

fn owned(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| (*w).to_string()).collect()
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            value_threshold_usd: 100.0,
            compliance_keywords: owned(DEFAULT_COMPLIANCE),
            deployment_keywords: owned(DEFAULT_DEPLOYMENT),
            cross_repo_keywords: owned(DEFAULT_CROSS_REPO),
            cross_repo_min_repositories: 2,
        }
    }
}

/// `[fallback]` section.
#[derive(Clone, Debug, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Fallback {
    /// Decision used when the team path fails.
    pub decision: FallbackDecision,
}

/// The only sensible fallback is the single path; the enum makes anything else a parse error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum FallbackDecision {
    /// One agent iterating alone.
    #[default]
    SingleAgent,
}

/// `[limits]` section.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest accepted description, in bytes.
    pub max_description_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_description_bytes: 1024 * 1024,
        }
    }
}

// ---- governance: budgets, tenants, approval gates -------------------------------------

/// Largest budget or tenant limit accepted, in USD (keeps micro-dollar sums exact).
pub const MAX_BUDGET_USD: f64 = 1_000_000.0;
/// Longest gate timeout accepted (30 days).
pub const MAX_GATE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);
/// Most `[[approval.rules]]`.
pub const MAX_APPROVAL_RULES: usize = 64;
/// Most tenants listed in `[tenants.usd_per_day]`.
pub const MAX_TENANTS: usize = 10_000;

/// `[budgets]` section: a task's budget when the caller gives none (0 = no budget).
#[derive(Clone, Debug, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Budgets {
    /// Budget in USD of a task routed to the single path.
    pub single_agent_usd: f64,
    /// Budget in USD of a task routed to the team path.
    pub multi_agent_usd: f64,
}

/// `[tenants]` section: spend per tenant (the task label `tenant`) and UTC calendar day.
#[derive(Clone, Debug, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Tenants {
    /// Limit in USD per UTC day of a tenant not listed below (0 = no limit).
    pub default_usd_per_day: f64,
    /// Limit in USD per UTC day by tenant name (0 = no limit).
    pub usd_per_day: std::collections::BTreeMap<String, f64>,
}

/// `[approval]` section.
#[derive(Clone, Debug, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Approval {
    /// `[[approval.rules]]`, in order.
    pub rules: Vec<ApprovalRule>,
}

/// One `[[approval.rules]]` entry: tasks with `reason` wait at `gate`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalRule {
    /// Reason code, e.g. `DEPLOYMENT` (the `REASON_CODE_` prefix is optional).
    pub reason: String,
    /// Which gate.
    pub gate: GateName,
    /// How long a decision may take, e.g. `"24h"`.
    pub timeout: String,
    /// What a timeout does.
    pub on_timeout: OnTimeout,
    /// What a rejection at `before_complete` does (default `fail`).
    #[serde(default)]
    pub on_reject: OnReject,
}

/// Gate names in the policy file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GateName {
    /// After the plan (team path) or before the first iteration (single path).
    BeforeStart,
    /// Before the task is marked COMPLETED.
    BeforeComplete,
}

/// `on_timeout` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnTimeout {
    /// The gate is rejected.
    Reject,
    /// The gate is approved.
    Approve,
}

/// `on_reject` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnReject {
    /// The task fails.
    #[default]
    Fail,
    /// The task goes back for more iterations with the reviewer's comment.
    Iterate,
}

impl GateName {
    /// The gate in the proto.
    pub fn to_proto(self) -> taskrouter_proto::v1::ApprovalGate {
        use taskrouter_proto::v1::ApprovalGate;
        match self {
            GateName::BeforeStart => ApprovalGate::BeforeStart,
            GateName::BeforeComplete => ApprovalGate::BeforeComplete,
        }
    }

    /// The file's gate for a proto gate (`None` for UNSPECIFIED or unknown values).
    pub fn from_proto(gate: i32) -> Option<Self> {
        use taskrouter_proto::v1::ApprovalGate;
        match ApprovalGate::try_from(gate).ok()? {
            ApprovalGate::BeforeStart => Some(GateName::BeforeStart),
            ApprovalGate::BeforeComplete => Some(GateName::BeforeComplete),
            ApprovalGate::Unspecified => None,
        }
    }

    /// The name the policy file uses (`before_start`).
    pub fn as_str(self) -> &'static str {
        match self {
            GateName::BeforeStart => "before_start",
            GateName::BeforeComplete => "before_complete",
        }
    }
}

impl OnTimeout {
    /// The action in the proto.
    pub fn to_proto(self) -> taskrouter_proto::v1::TimeoutAction {
        use taskrouter_proto::v1::TimeoutAction;
        match self {
            OnTimeout::Reject => TimeoutAction::Reject,
            OnTimeout::Approve => TimeoutAction::Approve,
        }
    }

    /// The file's action for a proto action (`None` for UNSPECIFIED or unknown values).
    pub fn from_proto(action: i32) -> Option<Self> {
        use taskrouter_proto::v1::TimeoutAction;
        match TimeoutAction::try_from(action).ok()? {
            TimeoutAction::Reject => Some(OnTimeout::Reject),
            TimeoutAction::Approve => Some(OnTimeout::Approve),
            TimeoutAction::Unspecified => None,
        }
    }

    /// The name the policy file uses (`reject`).
    pub fn as_str(self) -> &'static str {
        match self {
            OnTimeout::Reject => "reject",
            OnTimeout::Approve => "approve",
        }
    }
}

impl OnReject {
    /// The action in the proto.
    pub fn to_proto(self) -> taskrouter_proto::v1::RejectAction {
        use taskrouter_proto::v1::RejectAction;
        match self {
            OnReject::Fail => RejectAction::Fail,
            OnReject::Iterate => RejectAction::Iterate,
        }
    }

    /// The file's action for a proto action (UNSPECIFIED is the file's default, `fail`;
    /// `None` for unknown values).
    pub fn from_proto(action: i32) -> Option<Self> {
        use taskrouter_proto::v1::RejectAction;
        match RejectAction::try_from(action).ok()? {
            RejectAction::Fail | RejectAction::Unspecified => Some(OnReject::Fail),
            RejectAction::Iterate => Some(OnReject::Iterate),
        }
    }
}

/// The reason code a rule names, accepting `DEPLOYMENT` or `REASON_CODE_DEPLOYMENT`.
pub fn rule_reason(name: &str) -> Option<taskrouter_proto::v1::ReasonCode> {
    use taskrouter_proto::v1::ReasonCode;
    let upper = name.trim().to_ascii_uppercase();
    let full = if upper.starts_with("REASON_CODE_") {
        upper
    } else {
        format!("REASON_CODE_{upper}")
    };
    ReasonCode::from_str_name(&full).filter(|c| *c != ReasonCode::Unspecified)
}

/// Whether `name` can be a tenant: 1..=64 of `A-Z a-z 0-9 . _ -` (it becomes part of a
/// Redis key).
pub fn valid_tenant_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn check_usd(value: f64) -> Result<(), String> {
    if !value.is_finite() || !(0.0..=MAX_BUDGET_USD).contains(&value) {
        return Err(format!(
            "must be finite, >= 0 and at most {MAX_BUDGET_USD} (got {value})"
        ));
    }
    Ok(())
}

impl PolicyFile {
    fn validate_governance(&self, bad: &dyn Fn(&str, String) -> Error) -> Result<(), Error> {
        check_usd(self.budgets.single_agent_usd).map_err(|p| bad("budgets.single_agent_usd", p))?;
        check_usd(self.budgets.multi_agent_usd).map_err(|p| bad("budgets.multi_agent_usd", p))?;
        check_usd(self.tenants.default_usd_per_day)
            .map_err(|p| bad("tenants.default_usd_per_day", p))?;
        if self.tenants.usd_per_day.len() > MAX_TENANTS {
            return Err(bad(
                "tenants.usd_per_day",
                format!("must list at most {MAX_TENANTS} tenants"),
            ));
        }
        for (name, usd) in &self.tenants.usd_per_day {
            if !valid_tenant_name(name) {
                return Err(bad(
                    "tenants.usd_per_day",
                    format!("tenant names must be 1..=64 of A-Z a-z 0-9 . _ - (got {name:?})"),
                ));
            }
            check_usd(*usd).map_err(|p| bad(&format!("tenants.usd_per_day.{name}"), p))?;
        }
        if self.approval.rules.len() > MAX_APPROVAL_RULES {
            return Err(bad(
                "approval.rules",
                format!("must list at most {MAX_APPROVAL_RULES} rules"),
            ));
        }
        for (i, rule) in self.approval.rules.iter().enumerate() {
            let key = |k: &str| format!("approval.rules[{i}].{k}");
            if rule_reason(&rule.reason).is_none() {
                return Err(bad(
                    &key("reason"),
                    format!(
                        "is not a reason code (got {:?}; e.g. \"DEPLOYMENT\", \"COMPLIANCE_SENSITIVE\")",
                        rule.reason
                    ),
                ));
            }
            match humantime::parse_duration(&rule.timeout) {
                Ok(d) if d >= std::time::Duration::from_secs(1) && d <= MAX_GATE_TIMEOUT => {}
                _ => {
                    return Err(bad(
                        &key("timeout"),
                        format!(
                            "must be a duration between 1s and 30days, e.g. \"24h\" (got {:?})",
                            rule.timeout
                        ),
                    ));
                }
            }
            if rule.on_reject == OnReject::Iterate && rule.gate == GateName::BeforeStart {
                return Err(bad(
                    &key("on_reject"),
                    "\"iterate\" applies to before_complete only (a rejected plan fails the task)"
                        .into(),
                ));
            }
        }
        Ok(())
    }
}

// ---- end governance ------------------------------------------------------------------

impl PolicyFile {
    /// Parses and validates policy TOML; `origin` (a path or `builtin policy`) prefixes errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, Error> {
        let file: PolicyFile = toml::from_str(text).map_err(|e| Error::PolicyParse {
            origin: origin.to_string(),
            message: one_line_parse_error(text, &e),
        })?;
        file.validate(origin)?;
        Ok(file)
    }

    /// Checks every range and list; the first problem is returned, naming its key.
    pub fn validate(&self, origin: &str) -> Result<(), Error> {
        let bad = |key: &str, problem: String| Error::PolicyInvalid {
            origin: origin.to_string(),
            key: key.to_string(),
            problem,
        };
        let m = &self.multi_agent;
        if m.rollout_percent > 100 {
            return Err(bad(
                "multi_agent.rollout_percent",
                format!("must be between 0 and 100 (got {})", m.rollout_percent),
            ));
        }
        if m.rollout_group.trim().is_empty() {
            return Err(bad("multi_agent.rollout_group", "must not be empty".into()));
        }
        if m.rollout_group.len() > 128 || m.rollout_group.chars().any(char::is_control) {
            return Err(bad(
                "multi_agent.rollout_group",
                "must be at most 128 bytes without control characters".into(),
            ));
        }
        let r = &self.rules;
        if !r.value_threshold_usd.is_finite() || r.value_threshold_usd < 0.0 {
            return Err(bad(
                "rules.value_threshold_usd",
                "must be finite and >= 0".into(),
            ));
        }
        for (key, list) in [
            ("rules.compliance_keywords", &r.compliance_keywords),
            ("rules.deployment_keywords", &r.deployment_keywords),
            ("rules.cross_repo_keywords", &r.cross_repo_keywords),
        ] {
            check_keywords(key, list).map_err(|problem| bad(key, problem))?;
        }
        if r.cross_repo_min_repositories < 2 {
            return Err(bad(
                "rules.cross_repo_min_repositories",
                format!("must be at least 2 (got {})", r.cross_repo_min_repositories),
            ));
        }
        let max = self.limits.max_description_bytes;
        if max == 0 || max > MAX_DESCRIPTION_BYTES_CEILING {
            return Err(bad(
                "limits.max_description_bytes",
                format!("must be between 1 and {MAX_DESCRIPTION_BYTES_CEILING} (got {max})"),
            ));
        }
        self.validate_governance(&bad)
    }
}

fn check_keywords(key: &str, list: &[String]) -> Result<(), String> {
    if list.is_empty() {
        return Err("must list at least one keyword".into());
    }
    if list.len() > MAX_KEYWORDS_PER_LIST {
        return Err(format!(
            "must list at most {MAX_KEYWORDS_PER_LIST} keywords (got {})",
            list.len()
        ));
    }
    for (i, kw) in list.iter().enumerate() {
        // A keyword with edge whitespace could never match as a whole word.
        if kw.trim().is_empty() || kw.trim() != kw {
            return Err(format!(
                "entry {i} ({key}[{i}]) must be non-empty without leading or trailing whitespace"
            ));
        }
        if kw.len() > MAX_KEYWORD_BYTES || kw.chars().any(char::is_control) {
            return Err(format!(
                "entry {i} ({key}[{i}]) must be at most {MAX_KEYWORD_BYTES} bytes without control characters"
            ));
        }
    }
    Ok(())
}

/// `line L, column C: message` on one line; the TOML error's own Display quotes the file.
fn one_line_parse_error(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().split_whitespace().collect::<Vec<_>>().join(" ");
    match e.span() {
        Some(span) => {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<PolicyFile, Error> {
        PolicyFile::parse(text, "/x.toml")
    }

    fn err(text: &str) -> String {
        match parse(text) {
            Ok(_) => panic!("accepted {text:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn builtin_text_is_exactly_the_compiled_defaults() {
        assert_eq!(parse(BUILTIN_POLICY_TOML).unwrap(), PolicyFile::default());
    }

    #[test]
    fn an_empty_file_takes_every_default() {
        assert_eq!(parse("").unwrap(), PolicyFile::default());
    }

    #[test]
    fn a_partial_file_overrides_only_what_it_names() {
        let p = parse("[multi_agent]\nrollout_percent = 25\n").unwrap();
        assert_eq!(p.multi_agent.rollout_percent, 25);
        assert!(p.multi_agent.enabled);
        assert_eq!(p.rules, Rules::default());
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_position() {
        let e = err("[rules]\nvalue_treshold_usd = 5.0\n");
        assert!(e.contains("unknown field `value_treshold_usd`"), "{e}");
        assert!(e.starts_with("/x.toml: line 2, column 1:"), "{e}");
        assert!(!e.contains('\n'), "{e}");
        assert!(err("[rulez]\n").contains("unknown field `rulez`"));
    }

    #[test]
    fn out_of_range_settings_name_their_key() {
        for (text, key) in [
            (
                "[multi_agent]\nrollout_percent = 101",
                "multi_agent.rollout_percent",
            ),
            (
                "[multi_agent]\nrollout_group = \" \"",
                "multi_agent.rollout_group",
            ),
            (
                "[rules]\nvalue_threshold_usd = -1.0",
                "rules.value_threshold_usd",
            ),
            (
                "[rules]\nvalue_threshold_usd = nan",
                "rules.value_threshold_usd",
            ),
            (
                "[rules]\nvalue_threshold_usd = inf",
                "rules.value_threshold_usd",
            ),
            (
                "[rules]\ncompliance_keywords = []",
                "rules.compliance_keywords",
            ),
            (
                "[rules]\ndeployment_keywords = [\"\"]",
                "rules.deployment_keywords",
            ),
            (
                "[rules]\ncross_repo_keywords = [\" x\"]",
                "rules.cross_repo_keywords",
            ),
            (
                "[rules]\ncross_repo_min_repositories = 1",
                "rules.cross_repo_min_repositories",
            ),
            (
                "[limits]\nmax_description_bytes = 0",
                "limits.max_description_bytes",
            ),
            (
                "[limits]\nmax_description_bytes = 99999999",
                "limits.max_description_bytes",
            ),
        ] {
            let e = err(text);
            assert!(
                e.starts_with(&format!("/x.toml: {key} ")),
                "{text:?} -> {e}"
            );
        }
    }

    #[test]
    fn governance_settings_parse() {
        let p = parse(
            "[budgets]\nsingle_agent_usd = 2.5\nmulti_agent_usd = 10\n\
             [tenants]\ndefault_usd_per_day = 50\n[tenants.usd_per_day]\nacme = 5.0\n\
             [[approval.rules]]\nreason = \"DEPLOYMENT\"\ngate = \"before_start\"\ntimeout = \"24h\"\non_timeout = \"reject\"\n\
             [[approval.rules]]\nreason = \"REASON_CODE_COMPLIANCE_SENSITIVE\"\ngate = \"before_complete\"\ntimeout = \"30m\"\non_timeout = \"approve\"\non_reject = \"iterate\"\n",
        )
        .unwrap();
        assert_eq!(p.budgets.multi_agent_usd, 10.0);
        assert_eq!(p.tenants.usd_per_day["acme"], 5.0);
        assert_eq!(p.approval.rules.len(), 2);
        assert_eq!(p.approval.rules[1].on_reject, OnReject::Iterate);
        assert_eq!(p.approval.rules[0].on_reject, OnReject::Fail);
    }

    #[test]
    fn bad_governance_settings_name_their_key() {
        let rule = |extra: &str| {
            format!(
                "[[approval.rules]]\nreason = \"DEPLOYMENT\"\ngate = \"before_complete\"\non_timeout = \"reject\"\n{extra}"
            )
        };
        for (text, key) in [
            (
                "[budgets]\nsingle_agent_usd = -1".to_string(),
                "budgets.single_agent_usd",
            ),
            (
                "[budgets]\nmulti_agent_usd = nan".to_string(),
                "budgets.multi_agent_usd",
            ),
            (
                "[budgets]\nmulti_agent_usd = 1e12".to_string(),
                "budgets.multi_agent_usd",
            ),
            (
                "[tenants]\ndefault_usd_per_day = inf".to_string(),
                "tenants.default_usd_per_day",
            ),
            (
                "[tenants.usd_per_day]\n\"a b\" = 1".to_string(),
                "tenants.usd_per_day",
            ),
            (
                "[tenants.usd_per_day]\nacme = -2".to_string(),
                "tenants.usd_per_day.acme",
            ),
            (
                rule("timeout = \"1h\"\n").replace("DEPLOYMENT", "NOPE"),
                "approval.rules[0].reason",
            ),
            (rule("timeout = \"soon\"\n"), "approval.rules[0].timeout"),
            (rule("timeout = \"90days\"\n"), "approval.rules[0].timeout"),
            (
                rule("timeout = \"1h\"\non_reject = \"iterate\"\n")
                    .replace("before_complete", "before_start"),
                "approval.rules[0].on_reject",
            ),
        ] {
            let e = err(&text);
            assert!(
                e.starts_with(&format!("/x.toml: {key} ")),
                "{text:?} -> {e}"
            );
            assert!(!e.contains('\n'), "{e}");
        }
        assert!(
            err(&rule("timeout = \"1h\"\n").replace("before_complete", "after_lunch"))
                .contains("line 3")
        );
        assert!(err(&rule("")).contains("missing field `timeout`"));
    }

    #[test]
    fn wrong_types_and_fallbacks_are_parse_errors() {
        assert!(err("[multi_agent]\nrollout_percent = -5").contains("line 2"));
        assert!(err("[multi_agent]\nenabled = \"yes\"").contains("line 2"));
        assert!(err("[fallback]\ndecision = \"multi_agent\"").contains("line 2"));
        assert!(err("not toml at all [").contains("line 1"));
    }
}
