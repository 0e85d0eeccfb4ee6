//! The routing policy: which tasks take the team path, and why.
//!
//! A [`PolicyEngine`] is one compiled policy version (settings plus keyword automaton),
//! built once per load and shared read-only by every request.
//!
//! Evaluation runs the rules in a fixed order (complexity, value, compliance, deployment,
//! cross-repo); every rule that fires adds a reason and its weight to the score. If any
//! fired, the rules recommend the team path; the kill switch and the rollout bucket then
//! decide whether the task actually takes it.
//!
//! Score: the sum of the weights of the rules that fired (see the `WEIGHT_*` constants).
//!
//! Confidence, in `[0, 1]`:
//! - team path taken: `min(1, 0.5 + score / 10)` — one ordinary rule gives 0.7, the
//!   stronger the evidence the closer to 1;
//! - single path forced by the kill switch or the rollout: 1.0 (the policy decided, not a
//!   heuristic);
//! - single path because nothing fired: `0.9`, minus `0.15` for MEDIUM complexity, minus
//!   `0.15 × value / value_threshold_usd` — a task close to a threshold is a less certain
//!   single (range 0.6..=0.9).

mod file;
mod governance;
mod keywords;

pub use file::{
    Approval, ApprovalRule, BUILTIN_POLICY_TOML, Budgets, Fallback, FallbackDecision, GateName,
    Limits, MAX_APPROVAL_RULES, MAX_BUDGET_USD, MAX_DESCRIPTION_BYTES_CEILING, MAX_GATE_TIMEOUT,
    MAX_KEYWORD_BYTES, MAX_KEYWORDS_PER_LIST, MultiAgent, OnReject, OnTimeout, PolicyFile, Rules,
    Tenants, rule_reason, valid_tenant_name,
};
pub use governance::{DEFAULT_TENANT, TENANT_LABEL};
pub use keywords::{Category, Found, KeywordMatcher};

use crate::error::Error;
use crate::rollout::{in_rollout, rollout_bucket};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use taskrouter_proto::v1::{
    ApprovalRule as ProtoApprovalRule, Complexity, Policy, ReasonCode, RoutingAnalysis,
    RoutingDecision, RoutingReason, Task,
};

/// Weight of a HIGH complexity.
pub const WEIGHT_HIGH_COMPLEXITY: f64 = 2.0;
/// Weight of a CRITICAL complexity.
pub const WEIGHT_CRITICAL_COMPLEXITY: f64 = 3.0;
/// Weight of a value at or above the threshold.
pub const WEIGHT_HIGH_VALUE: f64 = 2.0;
/// Weight of compliance-sensitive work (the costliest to get wrong).
pub const WEIGHT_COMPLIANCE: f64 = 3.0;
/// Weight of deployment or production work.
pub const WEIGHT_DEPLOYMENT: f64 = 2.0;
/// Weight of cross-repository work.
pub const WEIGHT_CROSS_REPO: f64 = 2.0;

/// Most `repo:<name>` roles suggested for one task; a team does not scale past this.
pub const MAX_REPO_ROLES: usize = 8;

/// One `[[approval.rules]]` entry from its `GetPolicy` form (`i`: its index, for the
/// error's key).
fn approval_rule_from_proto(
    i: usize,
    r: &ProtoApprovalRule,
    origin: &str,
) -> Result<ApprovalRule, Error> {
    let bad = |key: &str, value: i32| Error::PolicyInvalid {
        origin: origin.to_string(),
        key: format!("approval_rules[{i}].{key}"),
        problem: format!("unknown or unspecified value {value}"),
    };
    let reason = ReasonCode::try_from(r.reason)
        .ok()
        .filter(|c| *c != ReasonCode::Unspecified)
        .ok_or_else(|| bad("reason", r.reason))?;
    Ok(ApprovalRule {
        reason: reason
            .as_str_name()
            .trim_start_matches("REASON_CODE_")
            .to_string(),
        gate: GateName::from_proto(r.gate).ok_or_else(|| bad("gate", r.gate))?,
        timeout: humantime::format_duration(std::time::Duration::from_secs(
            r.timeout_seconds.into(),
        ))
        .to_string(),
        on_timeout: OnTimeout::from_proto(r.on_timeout)
            .ok_or_else(|| bad("on_timeout", r.on_timeout))?,
        on_reject: OnReject::from_proto(r.on_reject)
            .ok_or_else(|| bad("on_reject", r.on_reject))?,
    })
}

/// Rollout group of the built-in policy; used by [`fallback_to_single_agent`].
pub const DEFAULT_ROLLOUT_GROUP: &str = "multi_agent";

/// Version string of a policy: the first 16 hex digits of the SHA-256 of its bytes.
pub fn policy_version(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    hex::encode(&digest[..8])
}

/// One compiled policy version.
#[derive(Clone, Debug)]
pub struct PolicyEngine {
    settings: PolicyFile,
    version: String,
    matcher: KeywordMatcher,
}

impl PolicyEngine {
    /// Parses, validates and compiles policy TOML; `origin` (path or `builtin policy`)
    /// prefixes errors. The version is the hash of `text`.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, Error> {
        let settings = PolicyFile::parse(text, origin)?;
        Self::compile(settings, policy_version(text.as_bytes()), origin)
    }

    /// The compiled-in policy ([`BUILTIN_POLICY_TOML`]).
    pub fn builtin() -> Result<Self, Error> {
        Self::from_toml(BUILTIN_POLICY_TOML, "builtin policy")
    }

    /// Validates `settings` and builds the keyword automaton.
    pub fn compile(settings: PolicyFile, version: String, origin: &str) -> Result<Self, Error> {
        settings.validate(origin)?;
        let r = &settings.rules;
        let matcher = KeywordMatcher::new(
            &r.compliance_keywords,
            &r.deployment_keywords,
            &r.cross_repo_keywords,
        )
        .map_err(|e| Error::PolicyInvalid {
            origin: origin.to_string(),
            key: "rules".to_string(),
            problem: format!("keywords cannot be compiled: {e}"),
        })?;
        Ok(Self {
            settings,
            version,
            matcher,
        })
    }

    /// Content-hash version of this policy.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The validated settings.
    pub fn settings(&self) -> &PolicyFile {
        &self.settings
    }

    /// Largest accepted description, in bytes.
    pub fn max_description_bytes(&self) -> u64 {
        self.settings.limits.max_description_bytes
    }

    /// The settings as the `Policy` message returned by `GetPolicy`.
    pub fn to_proto(&self) -> Policy {
        let s = &self.settings;
        Policy {
            multi_agent_enabled: s.multi_agent.enabled,
            rollout_percent: s.multi_agent.rollout_percent,
            rollout_group: s.multi_agent.rollout_group.clone(),
            value_threshold_usd: s.rules.value_threshold_usd,
            compliance_keywords: s.rules.compliance_keywords.clone(),
            deployment_keywords: s.rules.deployment_keywords.clone(),
            cross_repo_keywords: s.rules.cross_repo_keywords.clone(),
            cross_repo_min_repositories: s.rules.cross_repo_min_repositories,
            fallback_decision: match s.fallback.decision {
                FallbackDecision::SingleAgent => RoutingDecision::UseSingleAgent as i32,
            },
            max_description_bytes: s.limits.max_description_bytes,
            single_agent_budget_usd: s.budgets.single_agent_usd,
            multi_agent_budget_usd: s.budgets.multi_agent_usd,
            tenant_default_usd_per_day: s.tenants.default_usd_per_day,
            tenant_usd_per_day: s
                .tenants
                .usd_per_day
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
            approval_rules: s
                .approval
                .rules
                .iter()
                .map(|r| ProtoApprovalRule {
                    reason: rule_reason(&r.reason).unwrap_or(ReasonCode::Unspecified) as i32,
                    gate: r.gate.to_proto() as i32,
                    timeout_seconds: governance::rule_timeout_seconds(&r.timeout),
                    on_timeout: r.on_timeout.to_proto() as i32,
                    on_reject: r.on_reject.to_proto() as i32,
                })
                .collect(),
        }
    }

    /// Rebuilds the engine of a policy served by `GetPolicy` (its settings and version),
    /// so a client can evaluate tasks exactly as that router does.
    pub fn from_proto(policy: &Policy, version: &str, origin: &str) -> Result<Self, Error> {
        let settings = PolicyFile {
            multi_agent: MultiAgent {
                enabled: policy.multi_agent_enabled,
                rollout_percent: policy.rollout_percent,
                rollout_group: policy.rollout_group.clone(),
            },
            rules: Rules {
                value_threshold_usd: policy.value_threshold_usd,
                compliance_keywords: policy.compliance_keywords.clone(),
                deployment_keywords: policy.deployment_keywords.clone(),
                cross_repo_keywords: policy.cross_repo_keywords.clone(),
                cross_repo_min_repositories: policy.cross_repo_min_repositories,
            },
            fallback: Fallback {
                decision: FallbackDecision::SingleAgent,
            },
            limits: Limits {
                max_description_bytes: policy.max_description_bytes,
            },
            budgets: Budgets {
                single_agent_usd: policy.single_agent_budget_usd,
                multi_agent_usd: policy.multi_agent_budget_usd,
            },
            tenants: Tenants {
                default_usd_per_day: policy.tenant_default_usd_per_day,
                usd_per_day: policy
                    .tenant_usd_per_day
                    .iter()
                    .map(|(k, v)| (k.clone(), *v))
                    .collect(),
            },
            approval: Approval {
                rules: policy
                    .approval_rules
                    .iter()
                    .enumerate()
                    .map(|(i, r)| approval_rule_from_proto(i, r, origin))
                    .collect::<Result<_, _>>()?,
            },
        };
        Self::compile(settings, version.to_string(), origin)
    }

    /// Decides the path of `task`, then adds its governance (budget, tenant limit,
    /// approval gates). Total: an unvalidated task (unknown complexity, NaN value)
    /// simply fires fewer rules.
    pub fn evaluate(&self, task: &Task) -> RoutingAnalysis {
        let found = self.matcher.scan(&task.description);
        self.evaluate_scanned(task, &found)
    }

    /// Evaluates `task` under this policy and `other` (a shadow policy). When both have
    /// the same keyword lists, the description is scanned once: the scan is most of the
    /// cost of a long description.
    pub fn evaluate_pair(
        &self,
        other: &PolicyEngine,
        task: &Task,
    ) -> (RoutingAnalysis, RoutingAnalysis) {
        let (a, b) = (&self.settings.rules, &other.settings.rules);
        if a.compliance_keywords == b.compliance_keywords
            && a.deployment_keywords == b.deployment_keywords
            && a.cross_repo_keywords == b.cross_repo_keywords
        {
            let found = self.matcher.scan(&task.description);
            (
                self.evaluate_scanned(task, &found),
                other.evaluate_scanned(task, &found),
            )
        } else {
            (self.evaluate(task), other.evaluate(task))
        }
    }

    fn evaluate_scanned(&self, task: &Task, found: &Found) -> RoutingAnalysis {
        let mut analysis = self.decide(task, found);
        governance::apply(&self.settings, task, &mut analysis);
        analysis
    }

    /// The routing decision alone.
    fn decide(&self, task: &Task, found: &Found) -> RoutingAnalysis {
        let s = &self.settings;
        let complexity = Complexity::try_from(task.complexity).unwrap_or(Complexity::Unspecified);
        let mut fired = Fired::default();

        match complexity {
            Complexity::High | Complexity::Critical => {
                let (message, weight) = if complexity == Complexity::High {
                    ("complexity is HIGH", WEIGHT_HIGH_COMPLEXITY)
                } else {
                    ("complexity is CRITICAL", WEIGHT_CRITICAL_COMPLEXITY)
                };
                fired.add(
                    ReasonCode::HighComplexity,
                    message.to_string(),
                    weight,
                    Some("architect"),
                );
            }
            _ => {}
        }

        let value = task.estimated_value_usd;
        let threshold = s.rules.value_threshold_usd;
        if value.is_finite() && value >= threshold {
            fired.add(
                ReasonCode::HighValue,
                format!("estimated value ${value:.2} is at or above the ${threshold:.2} threshold"),
                WEIGHT_HIGH_VALUE,
                Some("reviewer"),
            );
        }

        if let Some(kw) = keyword(
            &s.rules.compliance_keywords,
            found.get(Category::Compliance),
        ) {
            fired.add(
                ReasonCode::ComplianceSensitive,
                format!("description mentions compliance-sensitive term \"{kw}\""),
                WEIGHT_COMPLIANCE,
                Some("security-reviewer"),
            );
        }
        if let Some(kw) = keyword(
            &s.rules.deployment_keywords,
            found.get(Category::Deployment),
        ) {
            fired.add(
                ReasonCode::Deployment,
                format!("description mentions deployment term \"{kw}\""),
                WEIGHT_DEPLOYMENT,
                Some("release-engineer"),
            );
        }

        let repos = distinct_repositories(task);
        let min_repos = s.rules.cross_repo_min_repositories;
        let many_repos = repos.len() >= min_repos as usize;
        let cross_kw = keyword(&s.rules.cross_repo_keywords, found.get(Category::CrossRepo));
        if many_repos || cross_kw.is_some() {
            let by_count = format!(
                "task touches {} repositories (cross-repo at {min_repos} or more)",
                repos.len()
            );
            let message = match (many_repos, cross_kw) {
                (true, Some(kw)) => {
                    format!("{by_count} and description mentions cross-repository term \"{kw}\"")
                }
                (false, Some(kw)) => {
                    format!("description mentions cross-repository term \"{kw}\"")
                }
                (_, None) => by_count,
            };
            fired.add(ReasonCode::CrossRepo, message, WEIGHT_CROSS_REPO, None);
            for repo in repos.iter().take(MAX_REPO_ROLES) {
                fired.role(format!("repo:{repo}"));
            }
        }

        let bucket = rollout_bucket(&s.multi_agent.rollout_group, &task.id);
        let recommended = !fired.reasons.is_empty();
        let score = fired.score;
        let mut analysis = RoutingAnalysis {
            decision: RoutingDecision::UseSingleAgent as i32,
            reasons: Vec::new(),
            score,
            confidence: 1.0,
            rollout_bucket: bucket,
            suggested_roles: Vec::new(),
            policy_version: self.version.clone(),
            multi_agent_recommended: recommended,
            ..Default::default()
        };

        if !recommended {
            analysis.reasons.push(reason(
                ReasonCode::SimpleTask,
                "no multi-agent rule fired".to_string(),
            ));
            analysis.confidence = self.single_confidence(complexity, value);
            return analysis;
        }

        analysis.reasons = fired.reasons;
        if !s.multi_agent.enabled {
            analysis.reasons.push(reason(
                ReasonCode::MultiAgentDisabled,
                "multi-agent execution is disabled by policy (multi_agent.enabled = false)"
                    .to_string(),
            ));
        } else if !in_rollout(bucket, s.multi_agent.rollout_percent) {
            analysis.reasons.push(reason(
                ReasonCode::OutsideRollout,
                format!(
                    "rollout bucket {bucket} is above multi_agent.rollout_percent {}",
                    s.multi_agent.rollout_percent
                ),
            ));
        } else {
            analysis.decision = RoutingDecision::UseMultiAgent as i32;
            analysis.confidence = (0.5 + score / 10.0).min(1.0);
            let mut roles = vec!["implementer".to_string()];
            roles.extend(fired.roles);
            analysis.suggested_roles = roles;
        }
        analysis
    }

    fn single_confidence(&self, complexity: Complexity, value: f64) -> f64 {
        let threshold = self.settings.rules.value_threshold_usd;
        let closeness = if threshold > 0.0 && value.is_finite() && value > 0.0 {
            (value / threshold).clamp(0.0, 1.0)
        } else {
            0.0
        };
        let medium = if complexity == Complexity::Medium {
            0.15
        } else {
            0.0
        };
        (0.9 - medium - 0.15 * closeness).clamp(0.0, 1.0)
    }
}

/// The single-path analysis to use when the team path cannot be used: the executor calls
/// it with `REASON_CODE_ROUTER_UNAVAILABLE` when the router cannot be reached and with
/// `REASON_CODE_FORCED_SINGLE_AGENT` when the caller asked for the single path.
///
/// The bucket is computed with [`DEFAULT_ROLLOUT_GROUP`] and `policy_version` is empty
/// (no policy decided); a caller holding the router's analysis may copy those over.
pub fn fallback_to_single_agent(
    task: &Task,
    code: ReasonCode,
    message: impl Into<String>,
) -> RoutingAnalysis {
    RoutingAnalysis {
        decision: RoutingDecision::UseSingleAgent as i32,
        reasons: vec![reason(code, message.into())],
        score: 0.0,
        confidence: 1.0,
        rollout_bucket: rollout_bucket(DEFAULT_ROLLOUT_GROUP, &task.id),
        suggested_roles: Vec::new(),
        policy_version: String::new(),
        multi_agent_recommended: false,
        ..Default::default()
    }
}

fn reason(code: ReasonCode, message: String) -> RoutingReason {
    RoutingReason {
        code: code as i32,
        message,
    }
}

fn keyword(list: &[String], index: Option<usize>) -> Option<&str> {
    index.and_then(|i| list.get(i)).map(String::as_str)
}

/// Distinct non-blank repository names, in first-seen order.
fn distinct_repositories(task: &Task) -> Vec<&str> {
    let mut seen = HashSet::new();
    task.repositories
        .iter()
        .map(|r| r.trim())
        .filter(|r| !r.is_empty() && seen.insert(*r))
        .collect()
}

#[derive(Default)]
struct Fired {
    reasons: Vec<RoutingReason>,
    score: f64,
    roles: Vec<String>,
}

impl Fired {
    fn add(&mut self, code: ReasonCode, message: String, weight: f64, role: Option<&str>) {
        self.reasons.push(reason(code, message));
        self.score += weight;
        if let Some(role) = role {
            self.role(role.to_string());
        }
    }

    fn role(&mut self, role: String) {
        if !self.roles.contains(&role) {
            self.roles.push(role);
        }
    }
}

#[cfg(test)]
mod tests;
