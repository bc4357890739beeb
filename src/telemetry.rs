//! Structured logs through `tracing`: text for people, JSON for log pipelines. Logs never carry
//! secrets or personal data: Kizuna's own events name ids and counts, never identifier values;
//! libraries that print request data at debug (tokio-postgres prints every statement's
//! parameters) are held at `info` whatever the configured level; and every line passes through
//! `redact` on its way out, which masks emails, `+`-phones, API tokens, write keys and
//! `Authorization` credentials that slipped into a message anyway.

use std::io::{self, Write};

use tracing_subscriber::filter::{filter_fn, LevelFilter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Layer};

use crate::config::{LogFormat, LogSettings};

/// Targets that log request data (statement parameters, headers) below `info`.
const PRINTS_REQUEST_DATA: [&str; 2] = ["tokio_postgres", "postgres_protocol"];

/// Installs the global subscriber once; later calls (tests) are no-ops.
pub fn init(settings: &LogSettings) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let private = filter_fn(|meta| {
        *meta.level() <= LevelFilter::INFO
            || !PRINTS_REQUEST_DATA
                .iter()
                .any(|t| meta.target().starts_with(t))
    });
    let writer = || Redacting(io::stderr());
    let layer = match settings.format {
        LogFormat::Json => fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(writer)
            .with_filter(private)
            .boxed(),
        LogFormat::Text => fmt::layer()
            .with_writer(writer)
            .with_filter(private)
            .boxed(),
    };
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(layer)
        .try_init();
}

/// A writer that redacts each formatted log line (the formatter writes a line in one call).
struct Redacting<W>(W);

impl<W: Write> Write for Redacting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let line = String::from_utf8_lossy(buf);
        self.0.write_all(redact(&line).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

fn is_email_local(c: char) -> bool {
    c.is_ascii_alphanumeric() || "._%+-".contains(c)
}

fn is_email_domain(c: char) -> bool {
    c.is_ascii_alphanumeric() || ".-".contains(c)
}

/// An email for a log line: `a***@e***` (first letters only).
pub fn mask_email(email: &str) -> String {
    let (local, domain) = email.split_once('@').unwrap_or((email, ""));
    let first = |s: &str| s.chars().next().map(String::from).unwrap_or_default();
    format!("{}***@{}***", first(local), first(domain))
}

/// Masks what must never reach a log: emails (`a***@e***`), phones written with `+` and at
/// least 7 digits (`+***`), `kz_` / `wk_` secrets, and the credentials after `Bearer ` /
/// `Basic `.
pub fn redact(line: &str) -> String {
    let chars: Vec<char> = line.chars().collect();
    let mut out = String::with_capacity(line.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        // Credentials after an auth scheme.
        if let Some(len) = scheme_at(&chars, i) {
            out.extend(&chars[i..i + len]);
            let mut j = i + len;
            while j < chars.len() && is_credential(chars[j]) {
                j += 1;
            }
            out.push_str("***");
            i = j;
            continue;
        }
        // kz_… / wk_… secrets.
        if (c == 'k' || c == 'w')
            && chars.get(i + 1) == Some(&if c == 'k' { 'z' } else { 'k' })
            && chars.get(i + 2) == Some(&'_')
            && (i == 0 || !chars[i - 1].is_ascii_alphanumeric())
        {
            let mut j = i + 3;
            while j < chars.len() && chars[j].is_ascii_alphanumeric() {
                j += 1;
            }
            if j - (i + 3) >= 8 {
                out.extend(&chars[i..i + 3]);
                out.push_str("***");
                i = j;
                continue;
            }
        }
        // Phones: '+' then digits and separators, at least 7 digits.
        if c == '+' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit()) {
            let mut j = i + 1;
            let mut digits = 0;
            while j < chars.len() && (chars[j].is_ascii_digit() || " -().".contains(chars[j])) {
                digits += usize::from(chars[j].is_ascii_digit());
                j += 1;
            }
            if digits >= 7 {
                out.push_str("+***");
                i = j;
                continue;
            }
        }
        // Emails: expand around '@'; what was already written of the local part is taken back.
        if c == '@' {
            let mut start = out.len();
            for (k, ch) in out.char_indices().rev() {
                if is_email_local(ch) {
                    start = k;
                } else {
                    break;
                }
            }
            let mut j = i + 1;
            while j < chars.len() && is_email_domain(chars[j]) {
                j += 1;
            }
            let domain: String = chars[i + 1..j].iter().collect();
            if start < out.len() && domain.contains('.') {
                let local = out.split_off(start);
                out.push_str(&mask_email(&format!("{local}@{domain}")));
                i = j;
                continue;
            }
        }
        out.push(c);
        i += 1;
    }
    out
}

fn scheme_at(chars: &[char], i: usize) -> Option<usize> {
    for scheme in ["Bearer ", "Basic ", "bearer ", "basic "] {
        let n = scheme.chars().count();
        if chars.len() >= i + n
            && chars[i..i + n].iter().copied().eq(scheme.chars())
            && (i == 0 || !chars[i - 1].is_ascii_alphanumeric())
        {
            return Some(n);
        }
    }
    None
}

fn is_credential(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~+/=".contains(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_and_personal_values_are_masked_and_the_rest_kept() {
        let line = r#"lookup email=Ada.Lovelace@Example.com phone="+44 (20) 7946-0958" key wk_AbCdEfGhIjKlMnOp Authorization: Bearer secret-token.1 at 2024-05-01T10:00:00+00:00 seq=12345678"#;
        let clean = redact(line);
        assert_eq!(
            clean,
            r#"lookup email=A***@E*** phone="+***" key wk_*** Authorization: Bearer *** at 2024-05-01T10:00:00+00:00 seq=12345678"#
        );
        assert_eq!(
            redact("no secrets here: 3 events, kz_ab"),
            "no secrets here: 3 events, kz_ab"
        );
        assert_eq!(redact("user@localhost said hi"), "user@localhost said hi");
    }
}
