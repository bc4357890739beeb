//! Segments: the definition language (pure, `definition.rs`).

pub mod definition;
