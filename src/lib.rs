//! Kizuna (絆), an open-source customer data platform. The modules follow the data flow:
//! sources → ingest → identity → profiles → segments → exports.

pub mod auth;
pub mod bench;
pub mod config;
pub mod db;
pub mod error;
pub mod exports;
pub mod health;
pub mod http;
pub mod identity;
pub mod ingest;
pub mod metrics;
pub mod privacy;
pub mod profiles;
pub mod query;
pub mod segments;
pub mod sources;
pub mod startup;
pub mod telemetry;
