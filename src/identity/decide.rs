//! The merge decision: given a message's identifiers (highest priority first) and what is known
//! about the profiles they point at, decide which profile the message belongs to, which profiles
//! merge into it, which new identifiers attach to it and which are dropped. Pure: no I/O.
//!
//! A merge or attachment that would give a profile more identifiers of a kind than its limit is
//! not made: the message's lowest-priority identifier that contributes to the conflict is dropped
//! from matching and the decision is taken again on the rest (Segment's semantics). This is what
//! keeps a shared family computer (one anonymous id, two user ids) from fusing two people.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Identifier, IdentityRules};

/// What the decision needs to know about an existing profile.
#[derive(Debug, Clone)]
pub struct ProfileFacts {
    pub first_seen: DateTime<Utc>,
    /// How many identifiers of each kind the profile holds.
    pub counts: HashMap<String, usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// No identifier matched: a new profile.
    New,
    Existing(Uuid),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeDecision {
    pub target: Target,
    /// Profiles merged into the target, each with the identifier of the message that joined it.
    pub losers: Vec<(Uuid, Identifier)>,
    /// Identifiers new to the system that now point at the target.
    pub attach: Vec<Identifier>,
    /// Identifiers left out of matching because a limit forbade them.
    pub dropped: Vec<Identifier>,
}

/// Decides for one message. `ids` is ordered highest priority first; `owner` tells which live
/// profile an identifier points at; `facts` describes each such profile.
pub fn decide(
    ids: &[Identifier],
    owner: impl Fn(&Identifier) -> Option<Uuid>,
    facts: impl Fn(Uuid) -> ProfileFacts,
    rules: &IdentityRules,
) -> MergeDecision {
    let mut active: Vec<(&Identifier, Option<Uuid>)> =
        ids.iter().map(|id| (id, owner(id))).collect();
    let mut dropped = Vec::new();
    let mut known: HashMap<Uuid, ProfileFacts> = HashMap::new();
    loop {
        let mut matched: Vec<Uuid> = Vec::new();
        for (_, profile) in &active {
            if let Some(p) = profile {
                if !matched.contains(p) {
                    matched.push(*p);
                }
            }
        }
        for p in &matched {
            known.entry(*p).or_insert_with(|| facts(*p));
        }
        let violating = violating_kinds(&active, &matched, &known, rules);
        if violating.is_empty() {
            return decision(active, matched, &known, dropped);
        }
        // The lowest-priority identifier that adds to a violated kind, directly (a new value of
        // that kind) or by bringing in a profile that holds that kind.
        let contributes = |(id, profile): &(&Identifier, Option<Uuid>)| match profile {
            None => violating.contains(&id.kind),
            Some(p) => violating
                .iter()
                .any(|k| known[p].counts.get(k).copied().unwrap_or(0) > 0),
        };
        let Some(index) = active.iter().rposition(contributes) else {
            return decision(active, matched, &known, dropped);
        };
        dropped.push(active.remove(index).0.clone());
    }
}

/// Kinds whose count after the merge would exceed both the limit and what any one of the
/// matched profiles already holds (a limit lowered later never splits a profile).
fn violating_kinds(
    active: &[(&Identifier, Option<Uuid>)],
    matched: &[Uuid],
    known: &HashMap<Uuid, ProfileFacts>,
    rules: &IdentityRules,
) -> Vec<String> {
    let mut totals: HashMap<&str, (usize, usize)> = HashMap::new(); // kind → (total, largest single)
    for p in matched {
        for (kind, n) in &known[p].counts {
            let entry = totals.entry(kind.as_str()).or_default();
            entry.0 += n;
            entry.1 = entry.1.max(*n);
        }
    }
    for (id, profile) in active {
        if profile.is_none() {
            totals.entry(id.kind.as_str()).or_default().0 += 1;
        }
    }
    let mut violating: Vec<String> = totals
        .into_iter()
        .filter(|(kind, (total, largest))| *total > rules.limit(kind).max(*largest))
        .map(|(kind, _)| kind.to_string())
        .collect();
    violating.sort_unstable();
    violating
}

fn decision(
    active: Vec<(&Identifier, Option<Uuid>)>,
    matched: Vec<Uuid>,
    known: &HashMap<Uuid, ProfileFacts>,
    dropped: Vec<Identifier>,
) -> MergeDecision {
    let survivor = matched
        .iter()
        .copied()
        .min_by_key(|p| (known[p].first_seen, *p));
    let Some(survivor) = survivor else {
        return MergeDecision {
            target: Target::New,
            losers: vec![],
            attach: active.into_iter().map(|(id, _)| id.clone()).collect(),
            dropped,
        };
    };
    let mut losers: Vec<(Uuid, Identifier)> = Vec::new();
    for (id, profile) in &active {
        if let Some(p) = profile {
            if *p != survivor && !losers.iter().any(|(l, _)| l == p) {
                losers.push((*p, (*id).clone()));
            }
        }
    }
    MergeDecision {
        target: Target::Existing(survivor),
        losers,
        attach: active
            .into_iter()
            .filter(|(_, p)| p.is_none())
            .map(|(id, _)| id.clone())
            .collect(),
        dropped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::tests::rules;
    use crate::identity::{ANONYMOUS_ID, EMAIL, PHONE, USER_ID};
    use chrono::TimeZone;

    struct World {
        owners: HashMap<Identifier, Uuid>,
        profiles: HashMap<Uuid, ProfileFacts>,
    }

    impl World {
        fn new() -> Self {
            World {
                owners: HashMap::new(),
                profiles: HashMap::new(),
            }
        }

        /// A profile first seen on `day` holding `ids`.
        fn profile(&mut self, day: u32, ids: &[(&str, &str)]) -> Uuid {
            let id = Uuid::new_v4();
            let mut counts = HashMap::new();
            for (kind, value) in ids {
                self.owners.insert(Identifier::new(*kind, *value), id);
                *counts.entry(kind.to_string()).or_insert(0) += 1;
            }
            let first_seen = Utc.with_ymd_and_hms(2024, 1, day, 0, 0, 0).unwrap();
            self.profiles
                .insert(id, ProfileFacts { first_seen, counts });
            id
        }

        fn decide(&self, ids: &[(&str, &str)]) -> MergeDecision {
            let rules = rules();
            let mut ids: Vec<Identifier> =
                ids.iter().map(|(k, v)| Identifier::new(*k, *v)).collect();
            ids.sort_by_key(|id| rules.rank(&id.kind));
            decide(
                &ids,
                |id| self.owners.get(id).copied(),
                |p| self.profiles[&p].clone(),
                &rules,
            )
        }
    }

    #[test]
    fn a_stranger_gets_a_new_profile_with_all_identifiers() {
        let d = World::new().decide(&[(USER_ID, "u1"), (ANONYMOUS_ID, "a1")]);
        assert_eq!(d.target, Target::New);
        assert_eq!(d.attach.len(), 2);
    }

    #[test]
    fn logging_in_attaches_the_user_id_to_the_anonymous_profile() {
        let mut w = World::new();
        let anon = w.profile(1, &[(ANONYMOUS_ID, "a1")]);
        let d = w.decide(&[(USER_ID, "u1"), (ANONYMOUS_ID, "a1")]);
        assert_eq!(d.target, Target::Existing(anon));
        assert_eq!(d.attach, vec![Identifier::new(USER_ID, "u1")]);
        assert!(d.losers.is_empty() && d.dropped.is_empty());
    }

    #[test]
    fn a_link_between_two_profiles_merges_them_into_the_oldest() {
        let mut w = World::new();
        let newer = w.profile(5, &[(EMAIL, "ada@example.com")]);
        let older = w.profile(2, &[(USER_ID, "u1")]);
        let d = w.decide(&[(USER_ID, "u1"), (EMAIL, "ada@example.com")]);
        assert_eq!(d.target, Target::Existing(older));
        assert_eq!(
            d.losers,
            vec![(newer, Identifier::new(EMAIL, "ada@example.com"))]
        );
    }

    #[test]
    fn a_shared_computer_does_not_fuse_two_users() {
        let mut w = World::new();
        let first = w.profile(1, &[(USER_ID, "u1"), (ANONYMOUS_ID, "family-pc")]);
        let d = w.decide(&[(USER_ID, "u2"), (ANONYMOUS_ID, "family-pc")]);
        assert_eq!(
            d.target,
            Target::New,
            "the second user gets a profile of their own"
        );
        assert_eq!(d.attach, vec![Identifier::new(USER_ID, "u2")]);
        assert_eq!(d.dropped, vec![Identifier::new(ANONYMOUS_ID, "family-pc")]);
        let _ = first;
    }

    #[test]
    fn a_shared_landline_does_not_fuse_two_users() {
        let mut w = World::new();
        let first = w.profile(1, &[(USER_ID, "u1"), (PHONE, "+442079460000")]);
        let second = w.profile(2, &[(USER_ID, "u2")]);
        let d = w.decide(&[(USER_ID, "u2"), (PHONE, "+442079460000")]);
        assert_eq!(d.target, Target::Existing(second));
        assert!(d.losers.is_empty());
        assert_eq!(d.dropped, vec![Identifier::new(PHONE, "+442079460000")]);
        let _ = first;
    }

    #[test]
    fn a_full_profile_keeps_matching_but_takes_no_sixth_email() {
        let mut w = World::new();
        let emails: Vec<(&str, String)> = (0..5).map(|i| (EMAIL, format!("e{i}@x.com"))).collect();
        let mut ids: Vec<(&str, &str)> = emails.iter().map(|(k, v)| (*k, v.as_str())).collect();
        ids.push((USER_ID, "u1"));
        let p = w.profile(1, &ids);
        let d = w.decide(&[(USER_ID, "u1"), (EMAIL, "e5@x.com")]);
        assert_eq!(d.target, Target::Existing(p));
        assert!(d.attach.is_empty());
        assert_eq!(d.dropped, vec![Identifier::new(EMAIL, "e5@x.com")]);
    }

    #[test]
    fn two_known_users_are_not_fused_through_their_lesser_identifiers() {
        let mut w = World::new();
        let a = w.profile(1, &[(USER_ID, "u1"), (EMAIL, "ada@example.com")]);
        let b = w.profile(2, &[(USER_ID, "u2"), (ANONYMOUS_ID, "a2")]);
        let d = w.decide(&[(EMAIL, "ada@example.com"), (ANONYMOUS_ID, "a2")]);
        assert_eq!(d.target, Target::Existing(a));
        assert!(d.losers.is_empty());
        assert_eq!(d.dropped, vec![Identifier::new(ANONYMOUS_ID, "a2")]);
        let _ = b;
    }

    #[test]
    fn an_email_shared_by_two_user_ids_merges_nothing() {
        let mut w = World::new();
        let a = w.profile(1, &[(USER_ID, "u1")]);
        let b = w.profile(2, &[(USER_ID, "u2"), (EMAIL, "shared@x.com")]);
        let d = w.decide(&[(USER_ID, "u1"), (EMAIL, "shared@x.com")]);
        assert_eq!(d.target, Target::Existing(a));
        assert!(d.losers.is_empty());
        let _ = b;
    }
}
