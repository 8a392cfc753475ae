//! Sotto's Rust client.
//!
//! # Layout
//!
//! | concept                                         | module          |
//! |-------------------------------------------------|-----------------|
//! | a small Socket.IO client over WebSocket         | [`socketio`]    |
//! | the relay's events as typed calls               | [`relay`]       |

pub mod relay;
pub mod socketio;
