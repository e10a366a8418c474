//! The one error type of the contract crate.

use thiserror::Error;

/// Everything that can go wrong while encoding, decoding or resolving schemas.
#[derive(Debug, Error)]
pub enum ContractError {
    /// The record is not in the Confluent wire format or its Avro body is malformed; retrying cannot help.
    #[error("malformed record: {0}")]
    Malformed(String),
    /// The record names a schema id this process does not know; a retry helps only once the registry has it.
    #[error("unknown schema id {0}")]
    UnknownSchema(u32),
    /// A schema file or the manifest is invalid; a deployment problem, retrying cannot help.
    #[error("invalid schema {name}: {reason}")]
    InvalidSchema {
        /// Schema or file name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// The Schema Registry could not be reached or refused a request; retrying may help.
    #[error("schema registry {url}: {reason}")]
    Registry {
        /// Registry URL.
        url: String,
        /// What went wrong.
        reason: String,
    },
}

impl ContractError {
    /// Whether retrying the same operation later can succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, ContractError::Registry { .. } | ContractError::UnknownSchema(_))
    }
}
