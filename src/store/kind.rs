//! The kinds of credential a store holds, and where each lives in the credentials file.
use crate::config::CredentialKind;

/// What `create` makes.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// An OAuth client (client credentials grant).
    Client,
    /// An API key (x-api-key).
    ApiKey,
}

impl Kind {
    pub fn section(self) -> &'static str {
        match self {
            Kind::Client => "clients",
            Kind::ApiKey => "api_keys",
        }
    }
    pub fn name_key(self) -> &'static str {
        match self {
            Kind::Client => "id",
            Kind::ApiKey => "name",
        }
    }
    pub fn hash_key(self) -> &'static str {
        match self {
            Kind::Client => "secret_hash",
            Kind::ApiKey => "key_hash",
        }
    }
    pub fn previous_key(self) -> &'static str {
        match self {
            Kind::Client => "previous_secret_hashes",
            Kind::ApiKey => "previous_key_hashes",
        }
    }
    pub fn label(self) -> &'static str {
        match self {
            Kind::Client => "client",
            Kind::ApiKey => "api key",
        }
    }
    pub fn json(self) -> &'static str {
        match self {
            Kind::Client => "client",
            Kind::ApiKey => "api_key",
        }
    }
}

impl From<Kind> for CredentialKind {
    fn from(k: Kind) -> Self {
        match k {
            Kind::Client => CredentialKind::Client,
            Kind::ApiKey => CredentialKind::ApiKey,
        }
    }
}
