//! User ids (§3): normalised to lower case and checked against a strict character set.
//!
//! Ids go into the X3DH associated data and safety numbers, so they must have exactly one
//! spelling: `^[a-z0-9][a-z0-9._-]{1,31}$` after ASCII lower-casing.

use core::fmt;

/// Shortest allowed user id.
pub const MIN_LEN: usize = 2;
/// Longest allowed user id (it must also fit a one-byte length prefix).
pub const MAX_LEN: usize = 32;

/// Why a user id was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UserIdError {
    /// Fewer than 2 or more than 32 characters.
    #[error("a user id has 2 to 32 characters")]
    Length,
    /// A character outside `a-z`, `0-9`, `.`, `_`, `-` (after lower-casing).
    #[error("a user id may only contain letters a-z, digits, '.', '_' and '-'")]
    Character,
    /// The first character is not a letter or digit.
    #[error("a user id starts with a letter or a digit")]
    Start,
}

/// A normalised, valid user id.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UserId(String);

impl UserId {
    /// Normalises (ASCII lower case) and validates a user id.
    pub fn parse(input: &str) -> Result<Self, UserIdError> {
        if !(MIN_LEN..=MAX_LEN).contains(&input.len()) {
            return Err(UserIdError::Length);
        }
        let normalised = input.to_ascii_lowercase();
        let bytes = normalised.as_bytes();
        if !bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(b))
        {
            return Err(UserIdError::Character);
        }
        if !(bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit()) {
            return Err(UserIdError::Start);
        }
        Ok(Self(normalised))
    }

    /// The normalised id.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The binary form used in associated data and signed messages: a length byte and the
    /// ASCII bytes.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        // MAX_LEN is 32, so the length always fits in a byte.
        out.push(self.0.len() as u8);
        out.extend_from_slice(self.0.as_bytes());
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UserId({})", self.0)
    }
}

impl core::str::FromStr for UserId {
    type Err = UserIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl AsRef<str> for UserId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_and_accepts_the_allowed_set() {
        assert_eq!(UserId::parse("Alice").unwrap().as_str(), "alice");
        assert_eq!(UserId::parse("bob.smith_2-x").unwrap().as_str(), "bob.smith_2-x");
        assert_eq!(UserId::parse("42").unwrap().as_str(), "42");
        assert_eq!(UserId::parse(&"a".repeat(32)).unwrap().as_str().len(), 32);
    }

    #[test]
    fn refuses_everything_else() {
        assert_eq!(UserId::parse("a"), Err(UserIdError::Length));
        assert_eq!(UserId::parse(&"a".repeat(33)), Err(UserIdError::Length));
        assert_eq!(UserId::parse(""), Err(UserIdError::Length));
        assert_eq!(UserId::parse(" alice"), Err(UserIdError::Character));
        assert_eq!(UserId::parse("al ice"), Err(UserIdError::Character));
        assert_eq!(UserId::parse("ålice"), Err(UserIdError::Character));
        assert_eq!(UserId::parse("alice\u{0}"), Err(UserIdError::Character));
        assert_eq!(UserId::parse("_alice"), Err(UserIdError::Start));
        assert_eq!(UserId::parse(".."), Err(UserIdError::Start));
        // Kelvin sign lower-cases to 'k' under Unicode rules; ASCII rules keep it out.
        assert_eq!(UserId::parse("\u{212A}im"), Err(UserIdError::Character));
    }

    #[test]
    fn binary_form_is_length_prefixed() {
        let mut out = Vec::new();
        UserId::parse("bob").unwrap().encode_into(&mut out);
        assert_eq!(out, b"\x03bob");
    }
}
