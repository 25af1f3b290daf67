//! Text rules shared by aggregates. Lengths count Unicode scalar values (`char`s), which is
//! what a person typing the text counts, not bytes.

/// `value` without surrounding whitespace, if it then has `1..=max` characters and holds
/// no NUL ([`holds_nul`]).
pub(crate) fn trimmed_within(value: &str, max: usize) -> Option<&str> {
    let trimmed = value.trim();
    let len = trimmed.chars().count();
    ((1..=max).contains(&len) && !holds_nul(trimmed)).then_some(trimmed)
}

/// Whether `value` holds U+0000, which no read model can store: PostgreSQL's `text` and
/// `jsonb` (the lite tables, and FerretDB's documents) refuse it. Accepted, such an event
/// would stop every projection that stores it.
pub(crate) fn holds_nul(value: &str) -> bool {
    value.contains('\0')
}

#[cfg(test)]
mod tests {
    use super::trimmed_within;

    #[test]
    fn surrounding_whitespace_is_trimmed_before_counting() {
        assert_eq!(trimmed_within("  abc \n", 3), Some("abc"));
        assert_eq!(trimmed_within("abcd", 3), None);
        assert_eq!(trimmed_within(" \t ", 3), None);
        assert_eq!(trimmed_within("", 3), None);
    }

    #[test]
    fn a_nul_character_is_refused() {
        assert_eq!(trimmed_within("a\0b", 3), None);
        assert_eq!(trimmed_within("ab\0", 3), None);
        assert_eq!(trimmed_within("abc", 3), Some("abc"));
    }

    #[test]
    fn characters_are_counted_not_bytes() {
        assert_eq!(trimmed_within("ééé", 3), Some("ééé"));
        assert_eq!(trimmed_within("éééé", 3), None);
    }
}
