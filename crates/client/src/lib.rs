//! Sotto's Rust client.
//!
//! # Layout
//!
//! | concept                                         | module          |
//! |-------------------------------------------------|-----------------|
//! | a small Socket.IO client over WebSocket         | [`socketio`]    |
//! | the relay's events as typed calls               | [`relay`]       |
//! | the local SQLite store                          | [`store`]       |
//! | sending, receiving, prekeys, key changes        | [`client`]      |
//! | untrusted text made safe to print               | [`display`]     |

pub mod client;
pub mod display;
pub mod relay;
pub mod socketio;
pub mod store;

pub use client::{Client, ClientError, Event, Trusted};
