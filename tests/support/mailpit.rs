//! What arrived at Mailpit (`MAILPIT_URL`), read through its HTTP API: the emailer's tests
//! each write to addresses of their own and search by them.

use std::time::{Duration, Instant};

use serde_json::Value;

/// One email as Mailpit stored it.
#[derive(Debug, Clone)]
pub struct Mail {
    pub id: String,
    /// Without angle brackets.
    pub message_id: String,
    pub subject: String,
    pub to: Vec<String>,
}

/// Mailpit's HTTP API.
#[derive(Debug, Clone)]
pub struct Mailpit {
    base: String,
    http: reqwest::Client,
}

impl Default for Mailpit {
    fn default() -> Self {
        Self::new()
    }
}

impl Mailpit {
    /// # Panics
    /// When `MAILPIT_URL` is unset where every server is required.
    pub fn new() -> Self {
        Self {
            base: testkit::mail_servers().1.trim_end_matches('/').to_owned(),
            http: reqwest::Client::new(),
        }
    }

    async fn get(&self, path: &str, query: &[(&str, &str)]) -> Value {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .query(query)
            .send()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "Mailpit at {} answers (scripts/services.sh --mail): {e}",
                    self.base
                )
            });
        assert!(
            response.status().is_success(),
            "Mailpit {path}: {}",
            response.status()
        );
        response
            .json()
            .await
            .unwrap_or_else(|e| panic!("Mailpit {path} JSON: {e}"))
    }

    /// Every email to `address`, oldest first.
    pub async fn to(&self, address: &str) -> Vec<Mail> {
        let found = self
            .get(
                "/api/v1/search",
                &[("query", &format!("to:\"{address}\"")), ("limit", "500")],
            )
            .await;
        let mut mails: Vec<Mail> = found["messages"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|m| Mail {
                id: m["ID"].as_str().unwrap_or_default().to_owned(),
                message_id: m["MessageID"].as_str().unwrap_or_default().to_owned(),
                subject: m["Subject"].as_str().unwrap_or_default().to_owned(),
                to: m["To"]
                    .as_array()
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|t| t["Address"].as_str().map(str::to_lowercase))
                    .collect(),
            })
            // The search matches substrings: only this very address.
            .filter(|m| m.to.iter().any(|t| t == &address.to_lowercase()))
            .collect();
        mails.reverse();
        mails
    }

    /// The plain-text and HTML bodies of `mail`.
    pub async fn bodies(&self, mail: &Mail) -> (String, String) {
        let message = self.get(&format!("/api/v1/message/{}", mail.id), &[]).await;
        (
            message["Text"]
                .as_str()
                .unwrap_or_default()
                .replace("\r\n", "\n"),
            message["HTML"]
                .as_str()
                .unwrap_or_default()
                .replace("\r\n", "\n"),
        )
    }

    /// Waits until `address` has an email whose subject is `subject`; returns it.
    ///
    /// # Panics
    /// When none arrives within `within`.
    pub async fn expect(&self, address: &str, subject: &str, within: Duration) -> Mail {
        let deadline = Instant::now() + within;
        loop {
            if let Some(mail) = self
                .to(address)
                .await
                .into_iter()
                .find(|m| m.subject == subject)
            {
                return mail;
            }
            assert!(
                Instant::now() < deadline,
                "no email \"{subject}\" to {address} within {within:?}; it has {:?}",
                self.to(address).await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The token after `param=` in `text` (a link the emailer wrote).
pub fn token_in(text: &str, param: &str) -> Option<String> {
    let start = text.find(&format!("{param}="))? + param.len() + 1;
    let token: String = text[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        .collect();
    (!token.is_empty()).then_some(token)
}
