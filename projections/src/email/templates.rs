//! The emails' words: a plain-text and an HTML body per kind. Names are the person's own
//! input, so they are escaped in HTML; links are built by the emailer from URL-safe tokens.

use chrono::{DateTime, Utc};

/// An email, ready for the SMTP envelope.
#[derive(Clone, PartialEq, Eq)]
pub struct Rendered {
    pub subject: String,
    pub text: String,
    pub html: String,
}

// Bodies hold links with tokens: never printed.
impl std::fmt::Debug for Rendered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rendered")
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

fn page(title: &str, paragraphs: &[String]) -> String {
    let body: String = paragraphs.iter().map(|p| format!("<p>{p}</p>\n")).collect();
    format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{}</title></head>\n\
         <body style=\"font-family: sans-serif; max-width: 36em\">\n{body}\
         <p style=\"color: #666\">— Hybrid Live</p>\n</body></html>\n",
        escape(title)
    )
}

/// Text as HTML text or a quoted attribute value.
fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}

fn button(link: &str, label: &str) -> String {
    format!("<a href=\"{}\">{}</a>", escape(link), escape(label))
}

/// Asks the person to confirm their address.
pub fn verify_email(name: &str, link: &str) -> Rendered {
    let subject = "Confirm your email address".to_owned();
    Rendered {
        text: format!(
            "Hello {name},\n\nPlease confirm that this is your email address by opening this \
             link:\n\n{link}\n\nIf you did not sign up for Hybrid Live, ignore this email.\n\n\
             — Hybrid Live\n"
        ),
        html: page(
            &subject,
            &[
                format!("Hello {},", escape(name)),
                format!(
                    "Please confirm that this is your email address: {}.",
                    button(link, "confirm my address")
                ),
                "If you did not sign up for Hybrid Live, ignore this email.".to_owned(),
            ],
        ),
        subject,
    }
}

/// Welcomes a person whose account is ready.
pub fn welcome(name: &str, username: &str, home: &str) -> Rendered {
    let subject = "Welcome to Hybrid Live".to_owned();
    Rendered {
        text: format!(
            "Hello {name},\n\nYour account @{username} is ready. Follow people to fill your \
             home feed:\n\n{home}\n\n— Hybrid Live\n"
        ),
        html: page(
            &subject,
            &[
                format!("Hello {},", escape(name)),
                format!(
                    "Your account @{} is ready. Follow people to fill your {}.",
                    escape(username),
                    button(home, "home feed")
                ),
            ],
        ),
        subject,
    }
}

/// Carries a reset link, valid until `expires_at`.
pub fn password_reset(name: &str, link: &str, expires_at: DateTime<Utc>) -> Rendered {
    let subject = "Reset your password".to_owned();
    let until = expires_at.format("%H:%M UTC on %Y-%m-%d");
    Rendered {
        text: format!(
            "Hello {name},\n\nSomeone asked to reset the password of your Hybrid Live \
             account. To choose a new one, open this link (it works once, until {until}):\n\n\
             {link}\n\nIf it was not you, ignore this email: your password stays as it is.\n\n\
             — Hybrid Live\n"
        ),
        html: page(
            &subject,
            &[
                format!("Hello {},", escape(name)),
                format!(
                    "Someone asked to reset the password of your Hybrid Live account. {} \
                     (the link works once, until {until}).",
                    button(link, "Choose a new password")
                ),
                "If it was not you, ignore this email: your password stays as it is.".to_owned(),
            ],
        ),
        subject,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_escaped_in_html_and_kept_in_text() {
        let mail = verify_email("<b>Ada</b> & co", "https://x.example/?verify_email=abc");
        assert!(mail.text.contains("Hello <b>Ada</b> & co,"));
        assert!(!mail.html.contains("<b>Ada</b>"));
        assert!(mail.html.contains("&lt;b&gt;Ada&lt;/b&gt;"));
        assert!(mail.html.contains("&amp; co,"));
        assert!(mail
            .html
            .contains("<a href=\"https://x.example/?verify_email=abc\">confirm my address</a>"));
        assert!(!format!("{mail:?}").contains("abc"));
    }
}
