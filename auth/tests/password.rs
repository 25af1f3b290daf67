//! Password hashing, verification (including the unknown-user path) and strength rules.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use auth::password::{
    prepare_dummy_hash, ARGON2_M_COST_KIB, ARGON2_P_COST, ARGON2_T_COST, MAX_PASSWORD_CHARS,
    MIN_DISTINCT_CHARS, MIN_PASSWORD_CHARS,
};
use auth::{
    check_password_strength, hash_password, hash_password_async, verify_dummy_password,
    verify_password, verify_password_async, WeakPassword,
};

const USERNAME: &str = "alice_w";
const EMAIL: &str = "alice@example.com";

/// `n` characters with exactly five distinct ones.
fn password_of(n: usize) -> String {
    "vq7#K".chars().cycle().take(n).collect()
}

#[test]
fn a_hashed_password_verifies_and_a_wrong_one_does_not() {
    let phc = hash_password("correct horse battery").unwrap();

    assert!(verify_password("correct horse battery", &phc));
    assert!(!verify_password("correct horse battery!", &phc));
    assert!(!verify_password("Correct horse battery", &phc));
    assert!(!verify_password("", &phc));
}

#[test]
fn the_phc_string_is_argon2id_with_the_owasp_parameters_and_a_fresh_salt() {
    let phc = hash_password("correct horse battery").unwrap();
    let again = hash_password("correct horse battery").unwrap();

    assert_eq!(
        (ARGON2_M_COST_KIB, ARGON2_T_COST, ARGON2_P_COST),
        (19_456, 2, 1)
    );
    assert!(
        phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "unexpected PHC string {phc}"
    );
    assert_eq!(phc.split('$').count(), 6, "PHC has salt and hash: {phc}");
    assert_ne!(phc, again, "each hash must have its own salt");
}

#[test]
fn a_malformed_stored_hash_verifies_nothing() {
    assert!(!verify_password(
        "correct horse battery",
        "not a phc string"
    ));
    assert!(!verify_password("correct horse battery", ""));
}

#[test]
fn the_unknown_user_dummy_verification_is_false_even_for_its_own_password() {
    assert!(!verify_dummy_password("correct horse battery"));
    assert!(!verify_dummy_password("hybrid-live: no such user"));
    assert!(!verify_dummy_password(""));
}

#[test]
fn the_unknown_user_path_costs_about_as_much_as_a_wrong_password() {
    prepare_dummy_hash();
    let phc = hash_password("correct horse battery").unwrap();
    let fastest = |f: &dyn Fn() -> bool| -> Duration {
        (0..3)
            .map(|_| {
                let start = Instant::now();
                assert!(!f());
                start.elapsed()
            })
            .min()
            .unwrap()
    };

    let wrong_password = fastest(&|| verify_password("wrong password!", &phc));
    let unknown_user = fastest(&|| verify_dummy_password("wrong password!"));

    // Loose bounds: tests run in parallel on small machines. An early return would be
    // thousands of times faster, not a few.
    assert!(
        unknown_user * 3 > wrong_password && wrong_password * 3 > unknown_user,
        "unknown user took {unknown_user:?}, wrong password {wrong_password:?}"
    );
}

#[tokio::test]
async fn the_async_wrappers_hash_verify_and_burn_time_for_unknown_users() {
    let phc = hash_password_async("correct horse battery".into())
        .await
        .unwrap();

    assert!(
        verify_password_async("correct horse battery".into(), Some(phc.clone()))
            .await
            .unwrap()
    );
    assert!(
        !verify_password_async("wrong horse battery".into(), Some(phc))
            .await
            .unwrap()
    );
    assert!(!verify_password_async("correct horse battery".into(), None)
        .await
        .unwrap());
}

#[test]
fn a_password_of_nine_characters_is_too_short_and_ten_is_enough() {
    assert_eq!(
        check_password_strength(&password_of(9), USERNAME, EMAIL),
        Err(WeakPassword::TooShort {
            min: MIN_PASSWORD_CHARS
        })
    );
    assert_eq!(
        check_password_strength(&password_of(10), USERNAME, EMAIL),
        Ok(())
    );
}

#[test]
fn a_password_of_128_characters_is_accepted_and_129_is_too_long() {
    assert_eq!(
        check_password_strength(&password_of(128), USERNAME, EMAIL),
        Ok(())
    );
    assert_eq!(
        check_password_strength(&password_of(129), USERNAME, EMAIL),
        Err(WeakPassword::TooLong {
            max: MAX_PASSWORD_CHARS
        })
    );
}

#[test]
fn length_counts_characters_not_bytes() {
    // Ten characters, twenty bytes: long enough.
    let accented = "éàüöçñßøåæ";
    assert_eq!(accented.len(), 20);
    assert_eq!(check_password_strength(accented, USERNAME, EMAIL), Ok(()));

    // 128 two-byte characters (256 bytes) are still within the maximum.
    let long: String = "éàüöç".chars().cycle().take(128).collect();
    assert_eq!(check_password_strength(&long, USERNAME, EMAIL), Ok(()));

    // Nine characters, eighteen bytes: too short.
    assert_eq!(
        check_password_strength("éàüöçñßøå", USERNAME, EMAIL),
        Err(WeakPassword::TooShort {
            min: MIN_PASSWORD_CHARS
        })
    );
}

#[test]
fn a_password_containing_the_username_in_any_case_is_refused() {
    assert_eq!(
        check_password_strength("my-ALICE_W-secret", USERNAME, EMAIL),
        Err(WeakPassword::ContainsUsername)
    );
    assert_eq!(
        check_password_strength("my-alice-secret", USERNAME, EMAIL),
        Ok(()),
        "a near miss is fine"
    );
}

#[test]
fn a_password_equal_to_the_email_is_refused() {
    assert_eq!(
        check_password_strength("Alice@Example.com", USERNAME, EMAIL),
        Err(WeakPassword::EqualsEmail)
    );
}

#[test]
fn a_common_password_is_refused_whatever_its_case() {
    assert_eq!(
        check_password_strength("password123", USERNAME, EMAIL),
        Err(WeakPassword::Common)
    );
    assert_eq!(
        check_password_strength("QwertyUiop", USERNAME, EMAIL),
        Err(WeakPassword::Common)
    );
}

#[test]
fn a_password_needs_five_distinct_characters() {
    assert_eq!(
        check_password_strength("abcdabcdabcd", USERNAME, EMAIL),
        Err(WeakPassword::TooFewDistinctChars {
            min: MIN_DISTINCT_CHARS
        })
    );
    assert_eq!(
        check_password_strength("aaaaaaaaaaaaaaaa", USERNAME, EMAIL),
        Err(WeakPassword::TooFewDistinctChars {
            min: MIN_DISTINCT_CHARS
        })
    );
    assert_eq!(
        check_password_strength("abcdeabcdeabcde", USERNAME, EMAIL),
        Ok(())
    );
}

#[test]
fn the_refusal_reason_is_a_human_sentence() {
    let reason = check_password_strength("short", USERNAME, EMAIL)
        .unwrap_err()
        .to_string();
    assert_eq!(reason, "password must have at least 10 characters");
    let reason = check_password_strength("x-alice_w-x", USERNAME, EMAIL)
        .unwrap_err()
        .to_string();
    assert_eq!(reason, "password must not contain the username");
}
