//! Trait survivorship: each trait keeps the value with the latest event time (ties broken by
//! arrival order), with its source; `null` removes a trait (and remembers when, so an older
//! value arriving late does not bring it back); set-once traits keep the earliest value. Pure.

use std::collections::HashSet;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Map, Value};
use uuid::Uuid;

/// When and where a trait value was observed.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub ts: DateTime<Utc>,
    pub seq: i64,
    pub source: Option<Uuid>,
}

impl Observation {
    /// Fixed-width RFC 3339 so that meta timestamps compare as strings.
    fn key(&self) -> (String, i64) {
        (
            self.ts.to_rfc3339_opts(SecondsFormat::Micros, true),
            self.seq,
        )
    }

    fn meta(&self, removed: bool) -> Value {
        let (ts, seq) = self.key();
        let mut meta = json!({"ts": ts, "seq": seq, "source": self.source});
        if removed {
            meta["removed"] = json!(true);
        }
        meta
    }
}

fn meta_key(meta: &Value) -> (String, i64) {
    (
        meta.get("ts")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        meta.get("seq").and_then(Value::as_i64).unwrap_or(0),
    )
}

/// Whether an observation at `incoming` replaces the one recorded in `existing` meta: the
/// latest wins, or for set-once traits the earliest.
fn replaces(
    name: &str,
    incoming: &(String, i64),
    existing: Option<&Value>,
    set_once: &HashSet<String>,
) -> bool {
    match existing {
        None => true,
        Some(existing) if set_once.contains(name) => *incoming < meta_key(existing),
        Some(existing) => *incoming > meta_key(existing),
    }
}

/// Applies one message's traits to a profile's traits and per-trait meta. Returns whether
/// anything changed.
pub fn apply(
    traits: &mut Map<String, Value>,
    meta: &mut Map<String, Value>,
    incoming: &Map<String, Value>,
    seen: &Observation,
    set_once: &HashSet<String>,
) -> bool {
    let key = seen.key();
    let mut changed = false;
    for (name, value) in incoming {
        if !replaces(name, &key, meta.get(name), set_once) {
            continue;
        }
        changed = true;
        if value.is_null() {
            traits.remove(name);
            meta.insert(name.clone(), seen.meta(true));
        } else {
            traits.insert(name.clone(), value.clone());
            meta.insert(name.clone(), seen.meta(false));
        }
    }
    changed
}

/// Folds a merged-away profile's traits into the survivor's, trait by trait, by the same rule.
pub fn merge(
    traits: &mut Map<String, Value>,
    meta: &mut Map<String, Value>,
    loser_traits: &Map<String, Value>,
    loser_meta: &Map<String, Value>,
    set_once: &HashSet<String>,
) {
    for (name, their_meta) in loser_meta {
        if replaces(name, &meta_key(their_meta), meta.get(name), set_once) {
            match loser_traits.get(name) {
                Some(value) => traits.insert(name.clone(), value.clone()),
                None => traits.remove(name),
            };
            meta.insert(name.clone(), their_meta.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(day: u32, seq: i64) -> Observation {
        Observation {
            ts: Utc.with_ymd_and_hms(2024, 1, day, 0, 0, 0).unwrap(),
            seq,
            source: None,
        }
    }

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn a_late_arriving_older_value_does_not_overwrite_a_newer_one() {
        let (mut traits, mut meta, none) = (Map::new(), Map::new(), HashSet::new());
        apply(
            &mut traits,
            &mut meta,
            &obj(json!({"plan": "pro"})),
            &at(10, 2),
            &none,
        );
        apply(
            &mut traits,
            &mut meta,
            &obj(json!({"plan": "free", "city": "Leeds"})),
            &at(3, 3),
            &none,
        );
        assert_eq!(traits["plan"], "pro");
        assert_eq!(traits["city"], "Leeds");
    }

    #[test]
    fn null_removes_a_trait_and_older_values_stay_removed() {
        let (mut traits, mut meta, none) = (Map::new(), Map::new(), HashSet::new());
        apply(
            &mut traits,
            &mut meta,
            &obj(json!({"coupon": "X"})),
            &at(1, 1),
            &none,
        );
        apply(
            &mut traits,
            &mut meta,
            &obj(json!({"coupon": null})),
            &at(5, 2),
            &none,
        );
        apply(
            &mut traits,
            &mut meta,
            &obj(json!({"coupon": "Y"})),
            &at(2, 3),
            &none,
        );
        assert!(!traits.contains_key("coupon"));
    }

    #[test]
    fn set_once_traits_keep_the_earliest_value() {
        let (mut traits, mut meta) = (Map::new(), Map::new());
        let set_once: HashSet<String> = ["first_utm_source".to_string()].into();
        apply(
            &mut traits,
            &mut meta,
            &obj(json!({"first_utm_source": "newsletter"})),
            &at(9, 1),
            &set_once,
        );
        apply(
            &mut traits,
            &mut meta,
            &obj(json!({"first_utm_source": "google"})),
            &at(2, 2),
            &set_once,
        );
        apply(
            &mut traits,
            &mut meta,
            &obj(json!({"first_utm_source": "tiktok"})),
            &at(20, 3),
            &set_once,
        );
        assert_eq!(traits["first_utm_source"], "google");
    }

    #[test]
    fn merging_keeps_the_newest_value_of_each_trait() {
        let none = HashSet::new();
        let (mut a, mut am) = (Map::new(), Map::new());
        apply(
            &mut a,
            &mut am,
            &obj(json!({"plan": "pro", "city": "York"})),
            &at(10, 1),
            &none,
        );
        let (mut b, mut bm) = (Map::new(), Map::new());
        apply(
            &mut b,
            &mut bm,
            &obj(json!({"plan": "free", "name": "Ada"})),
            &at(5, 2),
            &none,
        );
        apply(
            &mut b,
            &mut bm,
            &obj(json!({"city": "Bath"})),
            &at(12, 3),
            &none,
        );
        merge(&mut a, &mut am, &b, &bm, &none);
        assert_eq!(a["plan"], "pro");
        assert_eq!(a["city"], "Bath");
        assert_eq!(a["name"], "Ada");
    }
}
