//! A sorted character vocabulary (the book's `sorted(set(text))`).

use std::collections::HashMap;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vocabulary {
    chars: Vec<char>,
    index: HashMap<char, u32>,
}

/// Characters that the vocabulary does not contain, in order of first appearance.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("characters not in the model's vocabulary: {}", describe_chars(.0))]
pub struct UnknownChars(pub Vec<char>);

/// `'a', '\n', 'é'` – readable even for control characters.
pub fn describe_chars(chars: &[char]) -> String {
    chars
        .iter()
        .map(|c| format!("{c:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Vocabulary {
    /// The sorted set of distinct characters of `text`.
    pub fn from_text(text: &str) -> Self {
        let mut chars: Vec<char> = text
            .chars()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        chars.dedup();
        Self::from_chars(chars)
    }

    /// From an already sorted, distinct list (as saved with a model).
    pub fn from_chars(chars: Vec<char>) -> Self {
        let index = chars
            .iter()
            .enumerate()
            .map(|(i, &c)| (c, i as u32))
            .collect();
        Self { chars, index }
    }

    pub fn len(&self) -> usize {
        self.chars.len()
    }

    pub fn is_empty(&self) -> bool {
        self.chars.is_empty()
    }

    pub fn chars(&self) -> &[char] {
        &self.chars
    }

    pub fn id(&self, c: char) -> Option<u32> {
        self.index.get(&c).copied()
    }

    pub fn char(&self, id: u32) -> char {
        self.chars[id as usize]
    }

    /// Encodes `text`, or names every character the vocabulary lacks.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, UnknownChars> {
        let mut unknown = Vec::new();
        let ids = text
            .chars()
            .filter_map(|c| {
                let id = self.id(c);
                if id.is_none() && !unknown.contains(&c) {
                    unknown.push(c);
                }
                id
            })
            .collect();
        if unknown.is_empty() {
            Ok(ids)
        } else {
            Err(UnknownChars(unknown))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vocabulary_is_the_sorted_set_of_characters() {
        let v = Vocabulary::from_text("hello world");
        assert_eq!(v.chars(), &[' ', 'd', 'e', 'h', 'l', 'o', 'r', 'w']);
        assert_eq!(v.encode("low").unwrap(), vec![4, 5, 7]);
    }

    #[test]
    fn unknown_characters_are_all_named() {
        let v = Vocabulary::from_text("abc");
        let err = v.encode("abxzx\n").unwrap_err();
        assert_eq!(err.0, vec!['x', 'z', '\n']);
        assert_eq!(
            err.to_string(),
            "characters not in the model's vocabulary: 'x', 'z', '\\n'"
        );
    }
}
