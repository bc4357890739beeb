//! Black-box tests of the HTTP API: a real server, real PostgreSQL, a fresh database per test.

mod admin;
mod exports;
mod health;
mod helpers;
mod identity;
mod logs;
mod operations;
mod privacy;
mod process;
mod reliability;
mod scopes;
mod segments;
mod tracking;
