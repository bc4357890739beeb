//! Black-box tests of the HTTP API: a real server, real PostgreSQL, a fresh database per test.

mod admin;
mod health;
mod helpers;
mod identity;
mod operations;
mod process;
mod segments;
mod tracking;
