//! The SoundCloud OAuth token-exchange proxy: public clients (the web app with PKCE, the iOS
//! app) sign in through it, so only this function holds the client secret. `grant.rs` validates
//! the body, `upstream.rs` posts the form to SoundCloud, `service.rs` answers.

pub mod grant;
pub mod lambda;
pub mod service;
pub mod upstream;

pub use service::AuthTokenService;
