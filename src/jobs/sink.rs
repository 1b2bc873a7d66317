//! Where notifications go when they leave Confab: a [`Sink`].
//!
//! - `log`: one structured log line per notification (the default; useful
//!   on its own and as the stand-in until a real channel is configured).
//! - `webhook`: an HTTP POST of the notification's JSON to one URL, signed
//!   so the receiver can tell it came from us and is fresh:
//!   `X-Confab-Timestamp: <unix seconds>` and
//!   `X-Confab-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`.
//!   Any 2xx is success; anything else, or no answer in time, is a failure
//!   that the delivery job retries.

use std::time::Duration;

use async_trait::async_trait;
use hmac::{KeyInit, Mac};

use super::notification::Notification;
use super::JobError;

#[async_trait]
pub trait Sink: Send + Sync + 'static {
    /// Hands one notification on; an error means "try again later".
    async fn deliver(&self, notification: &Notification) -> Result<(), JobError>;
}

/// Which sink, as configured.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct SinkConfig {
    /// Where notifications are delivered: `log` or `webhook`.
    #[arg(id = "sink", long = "sink", env = "CONFAB_SINK", default_value = "log", value_parser = ["log", "webhook"])]
    pub kind: String,
    /// The webhook sink's URL (http or https).
    #[arg(id = "webhook_url", long = "webhook-url", env = "CONFAB_WEBHOOK_URL", value_parser = parse_url)]
    pub url: Option<String>,
    /// The key that signs webhook bodies (at least 16 bytes).
    #[arg(id = "webhook_secret", long = "webhook-secret", env = "CONFAB_WEBHOOK_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    /// Milliseconds a webhook request may take.
    #[arg(id = "webhook_timeout", long = "webhook-timeout-ms", env = "CONFAB_WEBHOOK_TIMEOUT_MS", default_value = "10000", value_parser = crate::config::millis(100, 300_000))]
    pub timeout: Duration,
}

impl SinkConfig {
    /// One log line per notification.
    pub fn log() -> Self {
        crate::config::defaults::<SinkConfig>(&[])
    }

    /// A signed POST to `url`.
    pub fn webhook(url: &str, secret: &str, timeout: Duration) -> Self {
        SinkConfig { kind: "webhook".into(), url: Some(url.into()), secret: Some(secret.into()), timeout }
    }

    /// A webhook needs its URL and a secret of at least 16 bytes.
    pub fn validate(&self) -> Result<(), crate::config::ConfigError> {
        use crate::config::{invalid, ConfigError};
        if self.kind != "webhook" {
            return Ok(());
        }
        if self.url.is_none() {
            return Err(ConfigError(
                "missing setting --webhook-url (CONFAB_WEBHOOK_URL); the webhook sink needs it".into(),
            ));
        }
        match &self.secret {
            None => Err(ConfigError(
                "missing setting --webhook-secret (CONFAB_WEBHOOK_SECRET); the webhook sink needs it".into(),
            )),
            Some(s) if s.len() < 16 => {
                Err(invalid("webhook-secret", "CONFAB_WEBHOOK_SECRET", "must be at least 16 bytes"))
            }
            Some(_) => Ok(()),
        }
    }
}

fn parse_url(raw: &str) -> Result<String, String> {
    if reqwest::Url::parse(raw).map_or(true, |u| !matches!(u.scheme(), "http" | "https")) {
        return Err("must be an http:// or https:// URL".into());
    }
    Ok(raw.to_string())
}

pub fn build(config: &SinkConfig) -> Result<Box<dyn Sink>, JobError> {
    Ok(match (config.kind.as_str(), &config.url, &config.secret) {
        ("webhook", Some(url), Some(secret)) => Box::new(WebhookSink::new(url, secret, config.timeout)?),
        ("webhook", _, _) => return Err(JobError::Failed("the webhook sink needs a URL and a secret".into())),
        _ => Box::new(LogSink),
    })
}

pub struct LogSink;

#[async_trait]
impl Sink for LogSink {
    async fn deliver(&self, n: &Notification) -> Result<(), JobError> {
        tracing::info!(
            target: "confab::notification",
            id = %n.id,
            user_id = %n.user_id,
            kind = %n.kind,
            title = %n.title,
            message = %n.message,
            data = %n.to_json()["data"],
            "notification"
        );
        Ok(())
    }
}

pub struct WebhookSink {
    http: reqwest::Client,
    url: String,
    secret: String,
}

pub const SIGNATURE_HEADER: &str = "x-confab-signature";
pub const TIMESTAMP_HEADER: &str = "x-confab-timestamp";
pub const ID_HEADER: &str = "x-confab-notification-id";

impl WebhookSink {
    pub fn new(url: &str, secret: &str, timeout: Duration) -> Result<Self, JobError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .user_agent(concat!("confab-worker/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| JobError::step("webhook client", e))?;
        Ok(WebhookSink { http, url: url.to_string(), secret: secret.to_string() })
    }
}

#[async_trait]
impl Sink for WebhookSink {
    async fn deliver(&self, n: &Notification) -> Result<(), JobError> {
        let body = serde_json::to_vec(&n.to_json()).map_err(|e| JobError::step("encoding the notification", e))?;
        let timestamp = chrono::Utc::now().timestamp();
        let response = self
            .http
            .post(&self.url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(TIMESTAMP_HEADER, timestamp.to_string())
            .header(SIGNATURE_HEADER, signature(&self.secret, timestamp, &body))
            .header(ID_HEADER, n.id.to_hex())
            .body(body)
            .send()
            .await
            .map_err(|e| JobError::step("webhook", without_url(e)))?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(JobError::Failed(format!("webhook answered {status}")))
        }
    }
}

/// reqwest's errors name the URL, which may carry a token in its query.
fn without_url(e: reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    format!("{kind}: {}", e.without_url())
}

/// The `X-Confab-Signature` value for a body sent at `timestamp`:
/// `sha256=` and the hex HMAC-SHA256 of `"<timestamp>.<body>"`.
pub fn signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// What a receiver does: recompute and compare in constant time, and refuse
/// timestamps more than `tolerance` away from now (replays).
pub fn verify(secret: &str, timestamp: &str, body: &[u8], header: &str, tolerance: Duration) -> bool {
    let Ok(ts) = timestamp.parse::<i64>() else { return false };
    if (chrono::Utc::now().timestamp() - ts).unsigned_abs() > tolerance.as_secs() {
        return false;
    }
    let Some(hex_mac) = header.strip_prefix("sha256=") else { return false };
    let Ok(given) = hex::decode(hex_mac) else { return false };
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(ts.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&given).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_cover_timestamp_and_body() {
        let now = chrono::Utc::now().timestamp();
        let sig = signature("s3cret", now, b"{\"a\":1}");
        assert!(sig.starts_with("sha256=") && sig.len() == 7 + 64, "{sig}");
        let ok =
            |ts: i64, body: &[u8], sig: &str| verify("s3cret", &ts.to_string(), body, sig, Duration::from_secs(300));
        assert!(ok(now, b"{\"a\":1}", &sig));
        assert!(!ok(now, b"{\"a\":2}", &sig), "another body");
        assert!(!ok(now + 1, b"{\"a\":1}", &sig), "another timestamp");
        assert!(!verify("other", &now.to_string(), b"{\"a\":1}", &sig, Duration::from_secs(300)));
        let old = now - 3600;
        assert!(!ok(old, b"x", &signature("s3cret", old, b"x")), "too old: a replay");
    }

    #[test]
    fn a_known_vector() {
        // HMAC-SHA256("key", "1700000000.{}"), computed with Python's hmac module.
        assert_eq!(
            signature("key", 1_700_000_000, b"{}"),
            "sha256=9d713ed406bb7076d4123f0dc2c39d2df5c654ed4b0cd56b52c8b4c940bd63ae"
        );
    }
}
