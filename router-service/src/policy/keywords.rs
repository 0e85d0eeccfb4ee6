//! Whole-word, ASCII case-insensitive keyword search over task descriptions, in one
//! linear pass.
//!
//! The description is ASCII-lowercased once (byte offsets are unchanged) and searched
//! case-sensitively for the lowercased keywords, which lets the automaton use its SIMD
//! prefilter: ordinary prose is scanned several times faster than with case-insensitive
//! matching. The search is leftmost-longest; every other keyword that matches at the same
//! position is a prefix of the longest one, so those are checked from a precomputed list,
//! and the search resumes one byte after each match start. Together this reports every
//! occurrence the old overlapping search did, so a match that fails the whole-word check
//! (`api key` inside `xapi key`) cannot hide a later one that passes (`key rotation`).
//! A candidate that starts inside a word skips to the end of that word, where the next
//! whole word can begin. Work is linear in the description length for a fixed policy, and
//! the search stops once every category has a match.

use aho_corasick::{AhoCorasick, Input, MatchKind};

/// Keyword categories, one per keyword rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Category {
    /// Compliance-sensitive work.
    Compliance = 0,
    /// Deployment or production work.
    Deployment = 1,
    /// Cross-repository work.
    CrossRepo = 2,
}

const CATEGORIES: usize = 3;

/// The first whole-word match of each category, as the index of the keyword in its list.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Found([Option<usize>; CATEGORIES]);

impl Found {
    /// Index (in its category's list) of the first keyword of `c` found, if any.
    pub fn get(&self, c: Category) -> Option<usize> {
        self.0[c as usize]
    }

    fn complete(&self) -> bool {
        self.0.iter().all(Option::is_some)
    }
}

/// One keyword of the automaton.
#[derive(Clone, Debug)]
struct Keyword {
    category: Category,
    /// Index in its category's list.
    index: usize,
    /// Length in bytes.
    len: usize,
    /// Other keywords that are prefixes of this one (shortest first): they match wherever
    /// this one does.
    prefixes: Vec<usize>,
}

/// A compiled keyword matcher.
#[derive(Clone, Debug)]
pub struct KeywordMatcher {
    automaton: AhoCorasick,
    /// Pattern id -> keyword.
    keywords: Vec<Keyword>,
}

impl KeywordMatcher {
    /// Builds the automaton for the three keyword lists.
    pub fn new(
        compliance: &[String],
        deployment: &[String],
        cross_repo: &[String],
    ) -> Result<Self, aho_corasick::BuildError> {
        let mut words: Vec<String> = Vec::new();
        let mut keywords = Vec::new();
        for (category, list) in [
            (Category::Compliance, compliance),
            (Category::Deployment, deployment),
            (Category::CrossRepo, cross_repo),
        ] {
            for (index, w) in list.iter().enumerate() {
                let lower = w.to_ascii_lowercase();
                keywords.push(Keyword {
                    category,
                    index,
                    len: lower.len(),
                    prefixes: Vec::new(),
                });
                words.push(lower);
            }
        }
        for (i, kw) in keywords.iter_mut().enumerate() {
            let mut prefixes: Vec<usize> = (0..words.len())
                .filter(|&j| j != i && words[i].starts_with(words[j].as_str()))
                .collect();
            prefixes.sort_by_key(|&j| (words[j].len(), j));
            kw.prefixes = prefixes;
        }
        let automaton = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(&words)?;
        Ok(Self {
            automaton,
            keywords,
        })
    }

    /// Finds the first whole-word keyword of each category in `text`.
    pub fn scan(&self, text: &str) -> Found {
        let mut found = Found::default();
        let lower = text.to_ascii_lowercase();
        let hay = lower.as_bytes();
        let mut pos = 0;
        while pos < hay.len() {
            let Some(m) = self.automaton.find(Input::new(hay).span(pos..hay.len())) else {
                break;
            };
            let start = m.start();
            if !starts_word(text, start) {
                pos = end_of_word(text, start);
                continue;
            }
            let Some(longest) = self.keywords.get(m.pattern().as_usize()) else {
                break;
            };
            // Shorter keywords first: the order an overlapping search reports them in.
            for kw in longest
                .prefixes
                .iter()
                .filter_map(|&j| self.keywords.get(j))
                .chain(std::iter::once(longest))
            {
                let slot = &mut found.0[kw.category as usize];
                if slot.is_none() && ends_word(text, start + kw.len) {
                    *slot = Some(kw.index);
                }
            }
            if found.complete() {
                break;
            }
            pos = start + 1;
        }
        found
    }
}

/// Letters, digits and `_` make up words; anything else (space, punctuation, hyphen) separates them.
fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Whether a whole word can start at byte `at`.
fn starts_word(text: &str, at: usize) -> bool {
    text.is_char_boundary(at)
        && !text
            .get(..at)
            .and_then(|s| s.chars().next_back())
            .is_some_and(is_word_char)
}

/// Whether a whole word can end at byte `at`.
fn ends_word(text: &str, at: usize) -> bool {
    text.is_char_boundary(at)
        && !text
            .get(at..)
            .and_then(|s| s.chars().next())
            .is_some_and(is_word_char)
}

/// The first byte at or after `at` where a new word can start: past the word `at` is in.
fn end_of_word(text: &str, at: usize) -> usize {
    let mut i = at;
    while i < text.len() && !text.is_char_boundary(i) {
        i += 1;
    }
    match text.get(i..) {
        Some(rest) => rest
            .char_indices()
            .find(|&(_, c)| !is_word_char(c))
            .map_or(text.len(), |(k, _)| i + k)
            .max(at + 1),
        None => text.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| (*w).to_string()).collect()
    }

    fn matcher() -> KeywordMatcher {
        KeywordMatcher::new(
            &list(&["phi", "hipaa", "api key", "key rotation"]),
            &list(&["deploy", "deployment"]),
            &list(&["cross-repo"]),
        )
        .unwrap()
    }

    #[test]
    fn keywords_match_whole_words_only() {
        let m = matcher();
        assert_eq!(m.scan("phishing campaign").get(Category::Compliance), None);
        assert_eq!(m.scan("graphic").get(Category::Compliance), None);
        assert_eq!(m.scan("handle PHI.").get(Category::Compliance), Some(0));
        assert_eq!(m.scan("(phi)").get(Category::Compliance), Some(0));
        assert_eq!(m.scan("phi_data").get(Category::Compliance), None);
        assert_eq!(m.scan("redeployable").get(Category::Deployment), None);
        assert_eq!(m.scan("the deployment").get(Category::Deployment), Some(1));
        assert_eq!(m.scan("re-deploy it").get(Category::Deployment), Some(0));
    }

    #[test]
    fn matching_ignores_ascii_case() {
        let m = matcher();
        assert_eq!(m.scan("HiPaA audit").get(Category::Compliance), Some(1));
        assert_eq!(m.scan("Cross-Repo sweep").get(Category::CrossRepo), Some(0));
    }

    #[test]
    fn a_glued_match_does_not_hide_a_later_whole_word_match() {
        // "api key" fails the boundary check (preceded by 'x') and overlaps "key rotation".
        let m = matcher();
        assert_eq!(
            m.scan("xapi key rotation").get(Category::Compliance),
            Some(3)
        );
    }

    #[test]
    fn non_ascii_letters_glue_words_and_non_ascii_punctuation_separates_them() {
        let m = matcher();
        assert_eq!(m.scan("éphi").get(Category::Compliance), None);
        assert_eq!(m.scan("“PHI” — yes").get(Category::Compliance), Some(0));
    }

    #[test]
    fn a_shorter_keyword_at_the_same_position_still_counts() {
        // "api key" is glued to "s"; "api" (a prefix keyword) is a whole word there.
        let m = KeywordMatcher::new(
            &list(&["api", "api key"]),
            &list(&["api keys rollout"]),
            &[],
        )
        .unwrap();
        let f = m.scan("rotate the api keys now");
        assert_eq!(f.get(Category::Compliance), Some(0));
        assert_eq!(f.get(Category::Deployment), None);
        let f = m.scan("the api keys rollout");
        assert_eq!(f.get(Category::Deployment), Some(0));
        assert_eq!(f.get(Category::Compliance), Some(0));
    }

    #[test]
    fn scanning_agrees_with_a_brute_force_whole_word_search() {
        let words = [
            "phi",
            "api key",
            "key rotation",
            "deploy",
            "deployment",
            "prod",
            "a",
        ];
        let m = KeywordMatcher::new(&list(&words), &[], &[]).unwrap();
        let texts = [
            "phishing api keyrotation key rotation",
            "redeployable productive prod",
            "xapi key rotation, then deploy",
            "deploymentdeploy deployment",
            "a",
            "éa a_ _a ba ab a.",
            "",
        ];
        for t in texts {
            let lower = t.to_ascii_lowercase();
            // Brute force: earliest (start, then shortest) whole-word occurrence.
            let mut best: Option<(usize, usize, usize)> = None;
            for (i, w) in words.iter().enumerate() {
                for (at, _) in lower.match_indices(w) {
                    if starts_word(t, at) && ends_word(t, at + w.len()) {
                        let cand = (at + w.len(), at, i);
                        if best.is_none_or(|b| cand < b) {
                            best = Some(cand);
                        }
                    }
                }
            }
            assert_eq!(
                m.scan(t).get(Category::Compliance),
                best.map(|b| b.2),
                "{t:?}"
            );
        }
    }

    #[test]
    fn each_category_reports_its_first_whole_word_match() {
        let f = matcher().scan("cross-repo deployment of HIPAA api key");
        assert_eq!(f.get(Category::CrossRepo), Some(0));
        assert_eq!(f.get(Category::Deployment), Some(1));
        assert_eq!(f.get(Category::Compliance), Some(1));
    }
}
