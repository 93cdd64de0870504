//! A dataset's source as manifest records carry it: written by ft-catalog-to-manifest, read by
//! ft-fetch (ftkit(7), MANIFEST). Absent optional fields read as null, absent patterns as none.

use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Source {
    Hf {
        repo_id: String,
        repo_type: String,
        revision: String,
        #[serde(default)]
        allow_patterns: Vec<String>,
        #[serde(default)]
        ignore_patterns: Vec<String>,
    },
    Git {
        url: String,
        commit: Option<String>,
        tag: Option<String>,
    },
    Http {
        files: Vec<HttpFile>,
    },
    Manual {
        instructions: String,
        url: Option<String>,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub struct HttpFile {
    pub url: String,
    pub sha256: Option<String>,
    pub filename: String,
}
