//! `[health]`: which events and properties the customer-health built-ins read, and the cuts they
//! apply. The defaults follow the Segment e-commerce spec; companies that name events their own
//! way change them here.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HealthSettings {
    /// The event of a purchase.
    pub order_event: String,
    /// The order's value: the first of these properties that holds a number.
    pub order_value_properties: Vec<String>,
    /// An event whose value (same properties) is taken off `clv`; empty: refunds are ignored.
    pub refund_event: String,
    /// The event of a survey answer.
    pub survey_event: String,
    /// The property naming the survey (`nps`, `csat`), compared case-insensitively.
    pub survey_property: String,
    /// The property holding the answer's score.
    pub score_property: String,
    pub nps_survey: String,
    pub csat_survey: String,
    /// The event opening a support ticket.
    pub ticket_created_event: String,
    /// Events that count as the first response to a ticket.
    pub ticket_response_events: Vec<String>,
    /// The property pairing a ticket's events.
    pub ticket_id_property: String,
    /// The purchase interval assumed for a customer with a single order, in days.
    pub one_time_buyer_interval_days: f64,
    /// Churn risk is low, medium, high from these multiples of the customer's own interval
    /// between orders without an order (below the first: none).
    pub churn_risk_multiples: [f64; 3],
    /// Tier name → the `clv` from which a customer is in it.
    pub loyalty_tiers: BTreeMap<String, f64>,
    /// Seconds the built-ins of one snapshot are reused before they are recomputed anyway
    /// (recency moves on even when no new event arrives).
    pub max_age_secs: u64,
}

impl Default for HealthSettings {
    /// The values of `config/default.toml` (a test keeps the two equal).
    fn default() -> Self {
        HealthSettings {
            order_event: "Order Completed".into(),
            order_value_properties: vec!["revenue".into(), "total".into()],
            refund_event: "Order Refunded".into(),
            survey_event: "Survey Responded".into(),
            survey_property: "survey".into(),
            score_property: "score".into(),
            nps_survey: "nps".into(),
            csat_survey: "csat".into(),
            ticket_created_event: "Ticket Created".into(),
            ticket_response_events: vec!["Ticket Replied".into(), "Ticket Resolved".into()],
            ticket_id_property: "ticket_id".into(),
            one_time_buyer_interval_days: 90.0,
            churn_risk_multiples: [1.0, 2.0, 3.0],
            loyalty_tiers: [
                ("bronze", 0.0),
                ("silver", 500.0),
                ("gold", 2000.0),
                ("platinum", 10000.0),
            ]
            .into_iter()
            .map(|(name, from)| (name.to_string(), from))
            .collect(),
            max_age_secs: 3600,
        }
    }
}

impl HealthSettings {
    /// Tiers from the highest threshold down.
    pub fn tiers_descending(&self) -> Vec<(&str, f64)> {
        let mut tiers: Vec<(&str, f64)> = self
            .loyalty_tiers
            .iter()
            .map(|(name, from)| (name.as_str(), *from))
            .collect();
        tiers.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(b.0)));
        tiers
    }
}
