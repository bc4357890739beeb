//! Profiles: trait survivorship (pure) and the read side of unified profiles — by id, by any
//! identifier, the cross-channel timeline and merge lineage.

pub mod computed;
pub mod lookups;
pub mod store;
pub mod traits;
