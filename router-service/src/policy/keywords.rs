//! Whole-word, ASCII case-insensitive keyword search over task descriptions, in one
//! linear pass.
//!
//! One Aho-Corasick automaton holds every keyword of every category. Overlapping search
//! reports every occurrence of every keyword, so a match that fails the whole-word check
//! (`api key` inside `xapi key`) cannot hide a later one that passes (`key rotation`), which
//! leftmost non-overlapping search would skip. Time is linear in the description length
//! (for a fixed policy) and the search stops once every category has a match.

use aho_corasick::{AhoCorasick, MatchKind};

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

/// A compiled keyword matcher.
#[derive(Clone, Debug)]
pub struct KeywordMatcher {
    automaton: AhoCorasick,
    /// Pattern id -> (category, index in that category's list).
    patterns: Vec<(Category, usize)>,
}

impl KeywordMatcher {
    /// Builds the automaton for the three keyword lists.
    pub fn new(
        compliance: &[String],
        deployment: &[String],
        cross_repo: &[String],
    ) -> Result<Self, aho_corasick::BuildError> {
        let mut words: Vec<&str> = Vec::new();
        let mut patterns = Vec::new();
        for (category, list) in [
            (Category::Compliance, compliance),
            (Category::Deployment, deployment),
            (Category::CrossRepo, cross_repo),
        ] {
            for (i, w) in list.iter().enumerate() {
                words.push(w.as_str());
                patterns.push((category, i));
            }
        }
        let automaton = AhoCorasick::builder()
            .ascii_case_insensitive(true)
            // Overlapping search needs standard semantics.
            .match_kind(MatchKind::Standard)
            .build(words)?;
        Ok(Self {
            automaton,
            patterns,
        })
    }

    /// Finds the first whole-word keyword of each category in `text`.
    pub fn scan(&self, text: &str) -> Found {
        let mut found = Found::default();
        let Ok(matches) = self.automaton.try_find_overlapping_iter(text) else {
            // Only fails for anchored searches, which this never asks for.
            return found;
        };
        for m in matches {
            let Some(&(category, index)) = self.patterns.get(m.pattern().as_usize()) else {
                continue;
            };
            let slot = &mut found.0[category as usize];
            if slot.is_some() || !is_whole_word(text, m.start(), m.end()) {
                continue;
            }
            *slot = Some(index);
            if found.complete() {
                break;
            }
        }
        found
    }
}

/// Letters, digits and `_` make up words; anything else (space, punctuation, hyphen) separates them.
fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Whether `text[start..end]` is not glued to a word character on either side.
fn is_whole_word(text: &str, start: usize, end: usize) -> bool {
    if !text.is_char_boundary(start) || !text.is_char_boundary(end) {
        return false;
    }
    let before = text.get(..start).and_then(|s| s.chars().next_back());
    let after = text.get(end..).and_then(|s| s.chars().next());
    !before.is_some_and(is_word_char) && !after.is_some_and(is_word_char)
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
    fn each_category_reports_its_first_whole_word_match() {
        let f = matcher().scan("cross-repo deployment of HIPAA api key");
        assert_eq!(f.get(Category::CrossRepo), Some(0));
        assert_eq!(f.get(Category::Deployment), Some(1));
        assert_eq!(f.get(Category::Compliance), Some(1));
    }
}
