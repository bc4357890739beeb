//! Identity resolution: which identifiers a message carries (normalized), the configured rules
//! (priority, per-profile limits, blocked values), the pure merge decision, and the resolver
//! worker that applies decisions to `profiles` / `identities` / `profile_merges`.

pub mod decide;
pub mod on_read;
pub mod resolver;
pub mod store;

use std::collections::{HashMap, HashSet};

use serde_json::Value;

use crate::config::IdentitySettings;

pub const USER_ID: &str = "user_id";
pub const ANONYMOUS_ID: &str = "anonymous_id";
pub const EMAIL: &str = "email";
pub const PHONE: &str = "phone";

/// One normalized identifier: `(kind, value)`, e.g. `("email", "ada@example.com")`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identifier {
    pub kind: String,
    pub value: String,
}

impl Identifier {
    pub fn new(kind: impl Into<String>, value: impl Into<String>) -> Self {
        Identifier {
            kind: kind.into(),
            value: value.into(),
        }
    }
}

const BUILT_IN_BLOCKED: [&str; 8] = [
    "",
    "null",
    "undefined",
    "none",
    "0",
    "anonymous",
    "unknown",
    "n/a",
];

/// The configured rules, ready to ask.
#[derive(Debug, Clone)]
pub struct IdentityRules {
    priority: Vec<String>,
    limits: HashMap<String, usize>,
    default_limit: usize,
    blocked: HashSet<String>,
    pub set_once_traits: HashSet<String>,
}

impl IdentityRules {
    pub fn from_settings(s: &IdentitySettings) -> Self {
        IdentityRules {
            priority: s.priority.clone(),
            limits: s.limits.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            default_limit: s.default_limit,
            blocked: BUILT_IN_BLOCKED
                .iter()
                .map(|v| v.to_string())
                .chain(s.blocked_values.iter().map(|v| v.trim().to_lowercase()))
                .collect(),
            set_once_traits: s.set_once_traits.iter().cloned().collect(),
        }
    }

    /// Lower is more important. Unlisted external kinds take the `external` slot; anything
    /// else unlisted comes last.
    pub fn rank(&self, kind: &str) -> usize {
        let builtin = matches!(kind, USER_ID | ANONYMOUS_ID | EMAIL | PHONE);
        self.priority
            .iter()
            .position(|k| k == kind)
            .or_else(|| {
                if builtin {
                    None
                } else {
                    self.priority.iter().position(|k| k == "external")
                }
            })
            .unwrap_or(self.priority.len())
    }

    pub fn limit(&self, kind: &str) -> usize {
        self.limits.get(kind).copied().unwrap_or(self.default_limit)
    }

    pub fn is_blocked(&self, value: &str) -> bool {
        self.blocked.contains(&value.trim().to_lowercase())
    }

    /// Normalizes a raw value for `kind`; `None` when it is blocked or unusable.
    pub fn normalize(&self, kind: &str, raw: &str) -> Option<String> {
        let value = match kind {
            EMAIL => raw.trim().to_lowercase(),
            PHONE => normalize_phone(raw)?,
            _ => raw.trim().to_string(),
        };
        if value.is_empty() || self.is_blocked(&value) || self.is_blocked(raw) {
            return None;
        }
        Some(value)
    }

    /// Every identifier a message may be matched on, with an alias's `previousId` read both as a
    /// user id and as an anonymous id: which one it is depends on the profiles when it resolves.
    /// (Without a `previousId` the two readings are the same, and the message is read once.)
    pub fn extract_either<'a>(
        &self,
        message: impl Fn(&'static str) -> MessageIds<'a>,
    ) -> Vec<Identifier> {
        let as_user = message(USER_ID);
        let alias = as_user.previous_id.is_some();
        let mut ids = self.extract(&as_user);
        if alias {
            for id in self.extract(&message(ANONYMOUS_ID)) {
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
        }
        ids
    }

    /// Every usable identifier of a stored message, highest priority first, without duplicates.
    pub fn extract(&self, message: &MessageIds<'_>) -> Vec<Identifier> {
        let mut ids: Vec<Identifier> = Vec::new();
        let mut push = |kind: &str, raw: &str| {
            if let Some(value) = self.normalize(kind, raw) {
                let id = Identifier::new(kind, value);
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
        };
        if let Some(user_id) = message.user_id {
            push(USER_ID, user_id);
        }
        if let Some(anonymous_id) = message.anonymous_id {
            push(ANONYMOUS_ID, anonymous_id);
        }
        if let Some(previous_id) = message.previous_id {
            push(message.previous_kind, previous_id);
        }
        let trait_sources = [message.traits, message.context_traits];
        for traits in trait_sources.into_iter().flatten() {
            if let Some(email) = traits.get("email").and_then(scalar_text) {
                push(EMAIL, &email);
            }
            if let Some(phone) = traits.get("phone").and_then(scalar_text) {
                push(PHONE, &phone);
            }
        }
        if let Some(Value::Array(external)) = message.external_ids {
            for entry in external {
                let kind = entry
                    .get("type")
                    .and_then(Value::as_str)
                    .map(|t| t.trim().to_lowercase());
                let value = entry.get("id").and_then(scalar_text);
                if let (Some(kind), Some(value)) = (kind, value) {
                    if !kind.is_empty() && kind.len() <= 100 {
                        push(&kind, &value);
                    }
                }
            }
        }
        ids.sort_by_key(|id| self.rank(&id.kind));
        ids
    }
}

/// The parts of a message that carry identifiers.
pub struct MessageIds<'a> {
    pub user_id: Option<&'a str>,
    pub anonymous_id: Option<&'a str>,
    /// `previousId` of an alias, and the kind it is matched as.
    pub previous_id: Option<&'a str>,
    pub previous_kind: &'a str,
    /// Top-level traits of an identify (a group's traits describe the group, not the person).
    pub traits: Option<&'a serde_json::Map<String, Value>>,
    pub context_traits: Option<&'a serde_json::Map<String, Value>>,
    pub external_ids: Option<&'a Value>,
}

fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// `+` and the digits: "+44 (20) 7946-0958" → "+442079460958". Fewer than 5 digits is no phone.
pub fn normalize_phone(raw: &str) -> Option<String> {
    let digits: String = raw.chars().filter(|c| c.is_ascii_digit()).collect();
    if digits.len() < 5 || digits.len() > 20 || digits.chars().all(|c| c == '0') {
        return None;
    }
    Some(format!("+{digits}"))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    pub fn rules() -> IdentityRules {
        let settings =
            crate::config::Settings::load_from(std::path::Path::new("/nonexistent")).unwrap();
        IdentityRules::from_settings(&settings.identity)
    }

    #[test]
    fn identifiers_are_normalized_ranked_and_blocked_values_dropped() {
        let rules = rules();
        let traits = json!({"email": "  Ada@Example.COM ", "phone": "+44 (20) 7946-0958"});
        let context_traits = json!({"email": "ada@example.com"});
        let external =
            json!([{"id": "D-17", "type": "zendesk_id"}, {"id": "null", "type": "crm_id"}]);
        let ids = rules.extract(&MessageIds {
            user_id: Some("undefined"),
            anonymous_id: Some("anon-1"),
            previous_id: None,
            previous_kind: ANONYMOUS_ID,
            traits: traits.as_object(),
            context_traits: context_traits.as_object(),
            external_ids: Some(&external),
        });
        assert_eq!(
            ids,
            vec![
                Identifier::new(EMAIL, "ada@example.com"),
                Identifier::new(PHONE, "+442079460958"),
                Identifier::new("zendesk_id", "D-17"),
                Identifier::new(ANONYMOUS_ID, "anon-1"),
            ]
        );
    }

    #[test]
    fn every_built_in_blocked_value_is_refused() {
        let rules = rules();
        for v in [
            "",
            " ",
            "null",
            "NULL",
            "undefined",
            "None",
            "0",
            "anonymous",
            "unknown",
            "N/A",
        ] {
            assert_eq!(rules.normalize(USER_ID, v), None, "{v:?}");
        }
        assert_eq!(normalize_phone("000-000"), None);
        assert_eq!(normalize_phone("12"), None);
    }
}
