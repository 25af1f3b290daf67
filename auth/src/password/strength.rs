//! The password rules checked at registration (API: 422 weak password).
//!
//! Length rules follow NIST SP 800-63B (a long minimum, a generous maximum, no composition
//! rules) plus a block list of the most common passwords that pass the length rule.

/// Fewest characters (Unicode scalar values, not bytes) a password may have.
pub const MIN_PASSWORD_CHARS: usize = 10;
/// Most characters a password may have.
pub const MAX_PASSWORD_CHARS: usize = 128;
/// Fewest distinct characters a password may have (rejects `aaaaaaaaaa`, `ababababab`).
pub const MIN_DISTINCT_CHARS: usize = 5;

/// Common passwords of at least [`MIN_PASSWORD_CHARS`] characters with enough distinct
/// characters to pass the other rules (shorter or more repetitive ones are rejected anyway),
/// lower case: the comparison ignores case.
const COMMON_PASSWORDS: &[&str] = &[
    "1234567890",
    "0987654321",
    "12345678910",
    "123456789a",
    "1q2w3e4r5t",
    "1q2w3e4r5t6y",
    "1qaz2wsx3edc",
    "abc1234567",
    "abcdefghij",
    "asdfghjkl;",
    "baseball123",
    "changeme123",
    "football123",
    "iloveyou12",
    "iloveyou123",
    "letmein123",
    "michael123",
    "monkey1234",
    "passw0rd123",
    "password01",
    "password1!",
    "password12",
    "password123",
    "password1234",
    "princess123",
    "q1w2e3r4t5",
    "qazwsxedc123",
    "qwerty1234",
    "qwerty12345",
    "qwerty123456",
    "qwertyuiop",
    "qwertyuiop123",
    "sunshine123",
    "superman123",
    "trustno1234",
    "welcome123",
    "zaq12wsxcde",
    "zxcvbnm123",
    "hybridlive123",
];

/// Why a password was refused; the message is meant for the person choosing it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WeakPassword {
    /// Fewer than [`MIN_PASSWORD_CHARS`] characters.
    #[error("password must have at least {min} characters")]
    TooShort {
        /// The minimum.
        min: usize,
    },
    /// More than [`MAX_PASSWORD_CHARS`] characters.
    #[error("password must have at most {max} characters")]
    TooLong {
        /// The maximum.
        max: usize,
    },
    /// One of the most common passwords.
    #[error("password is too common")]
    Common,
    /// Contains the username (ignoring case).
    #[error("password must not contain the username")]
    ContainsUsername,
    /// Is the email address (ignoring case).
    #[error("password must not be the email address")]
    EqualsEmail,
    /// Fewer than [`MIN_DISTINCT_CHARS`] distinct characters.
    #[error("password must have at least {min} different characters")]
    TooFewDistinctChars {
        /// The minimum.
        min: usize,
    },
}

/// Checks `password` against the registration rules, in this order: length (10 to 128
/// characters), not a common password, not containing `username`, not equal to `email`, at
/// least 5 distinct characters. Comparisons with the username, the email and the common list
/// ignore case.
///
/// # Errors
/// The first rule broken, as a [`WeakPassword`] whose message can be shown to the user.
pub fn check_password_strength(
    password: &str,
    username: &str,
    email: &str,
) -> Result<(), WeakPassword> {
    let chars = password.chars().count();
    if chars < MIN_PASSWORD_CHARS {
        return Err(WeakPassword::TooShort {
            min: MIN_PASSWORD_CHARS,
        });
    }
    if chars > MAX_PASSWORD_CHARS {
        return Err(WeakPassword::TooLong {
            max: MAX_PASSWORD_CHARS,
        });
    }

    let lower = password.to_lowercase();
    if COMMON_PASSWORDS.contains(&lower.as_str()) {
        return Err(WeakPassword::Common);
    }
    let username = username.trim().to_lowercase();
    if !username.is_empty() && lower.contains(&username) {
        return Err(WeakPassword::ContainsUsername);
    }
    let email = email.trim();
    if !email.is_empty() && lower == email.to_lowercase() {
        return Err(WeakPassword::EqualsEmail);
    }

    let mut distinct: Vec<char> = password.chars().collect();
    distinct.sort_unstable();
    distinct.dedup();
    if distinct.len() < MIN_DISTINCT_CHARS {
        return Err(WeakPassword::TooFewDistinctChars {
            min: MIN_DISTINCT_CHARS,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_common_password_would_pass_the_other_rules() {
        for common in COMMON_PASSWORDS {
            assert_eq!(*common, common.to_lowercase(), "{common} is not lower case");
            assert_eq!(
                check_password_strength(common, "", ""),
                Err(WeakPassword::Common),
                "{common} is rejected by another rule first, so listing it is dead weight"
            );
        }
    }
}
