//! The JSON Schemas of the two config files (`portcullis schema main|credentials`),
//! generated from the raw serde types in [`crate::config::raw`] so that they cannot drift
//! from what the loader reads: `deny_unknown_fields` becomes `additionalProperties: false`,
//! a `#[serde(default)]` field is optional, a doc comment is a description. The schema
//! checks the shape; `portcullis check` still does the rest (permissions, addresses,
//! roles that exist, production rules).
//!
//! The committed copies under `schema/` are what editors load through the
//! `# yaml-language-server: $schema=…` line of each shipped file; tests/schema.rs checks
//! they equal this output.
use schemars::{JsonSchema, Schema};

use crate::config::raw::{CredentialsRaw, MainRaw};

/// Which config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Which {
    /// `portcullis.yaml`.
    Main,
    /// The credentials file (`credentials.yaml`).
    Credentials,
}

impl Which {
    /// The file name of the committed copy under `schema/`.
    pub fn file_name(self) -> &'static str {
        match self {
            Which::Main => "portcullis.schema.json",
            Which::Credentials => "credentials.schema.json",
        }
    }
}

fn generate<T: JsonSchema>(title: &str, description: &str) -> Schema {
    let mut schema = schemars::generate::SchemaSettings::draft2020_12().into_generator().into_root_schema_for::<T>();
    schema.insert("title".into(), title.into());
    schema.insert("description".into(), description.into());
    schema
}

/// The JSON Schema (draft 2020-12) of one config file.
pub fn schema(which: Which) -> Schema {
    match which {
        Which::Main => generate::<MainRaw>(
            "portcullis.yaml",
            "The main config of portcullis, the authentication and authorization sidecar (SPEC §3).",
        ),
        Which::Credentials => generate::<CredentialsRaw>(
            "portcullis credentials file",
            "Roles, users, OAuth clients and API keys of portcullis (SPEC §4). Only hashes of secrets.",
        ),
    }
}

/// The schema as printed and committed: pretty JSON with a final newline.
pub fn render(which: Which) -> String {
    let mut text = serde_json::to_string_pretty(&schema(which)).unwrap_or_default();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_main_schema_refuses_unknown_fields_and_requires_listen() {
        let s = serde_json::to_value(schema(Which::Main)).unwrap();
        assert_eq!(s["additionalProperties"], false);
        let required: Vec<&str> = s["required"].as_array().unwrap().iter().filter_map(|v| v.as_str()).collect();
        assert_eq!(required, ["listen", "upstream"]);
        assert!(s["properties"]["listen"]["description"].as_str().is_some_and(|d| d.contains("listener")));
        assert!(s["properties"]["environment"].to_string().contains("#/$defs/Environment"));
        assert_eq!(s["$defs"]["Environment"]["enum"], serde_json::json!(["sandbox", "production"]));
    }

    #[test]
    fn the_credentials_schema_describes_every_section() {
        let s = serde_json::to_value(schema(Which::Credentials)).unwrap();
        for section in ["roles", "users", "clients", "api_keys"] {
            assert!(s["properties"].get(section).is_some(), "{section}");
        }
        assert!(s["required"].is_null() || s["required"].as_array().is_some_and(|r| r.is_empty()));
    }
}
