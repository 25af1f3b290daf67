//! Text rules shared by aggregates. Lengths count Unicode scalar values (`char`s), which is
//! what a person typing the text counts, not bytes.

/// `value` without surrounding whitespace, if it then has `1..=max` characters.
pub(crate) fn trimmed_within(value: &str, max: usize) -> Option<&str> {
    let trimmed = value.trim();
    let len = trimmed.chars().count();
    (1..=max).contains(&len).then_some(trimmed)
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
    fn characters_are_counted_not_bytes() {
        assert_eq!(trimmed_within("ééé", 3), Some("ééé"));
        assert_eq!(trimmed_within("éééé", 3), None);
    }
}
