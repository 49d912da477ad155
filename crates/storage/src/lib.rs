//! Object storage for task inputs and results: a local folder, or any S3-compatible store
//! (AWS S3, MinIO, Ceph, R2, ...), behind one type, [`Storage`], over the `object_store` crate.
//!
//! A [`Location`] is written as a URL or a path:
//!
//! - `s3://bucket/prefix` (the prefix may be empty or have several segments): the endpoint,
//!   region and credentials come from the usual `AWS_*` variables (`AWS_ENDPOINT_URL`,
//!   `AWS_REGION` or `AWS_DEFAULT_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//!   `AWS_SESSION_TOKEN`, ...), each overridden by the matching [`S3Options`] field when set. An
//!   `http://` endpoint is allowed as such (a store on a private network).
//! - `file:///abs/folder` or a plain path: a folder on this machine, created when missing.
//!   Writes go to a temporary file renamed into place, so a reader never sees half an object.
//!
//! Keys are `/`-separated relative paths (`results/<task id>/0.png`); a key with an empty,
//! `.` or `..` segment is refused, so nothing outside the location can be named.
//!
//! One type rather than a trait with an implementation per backend: `object_store` already is
//! that trait, and the backends differ here only in how they are opened and in presigned URLs.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

pub use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::signer::Signer;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use thiserror::Error;
use url::Url;

/// Where objects are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A folder on this machine.
    Local(PathBuf),
    /// A bucket of an S3-compatible store, and a key prefix inside it (no leading or trailing
    /// `/`; empty for the whole bucket).
    S3 { bucket: String, prefix: String },
}

impl FromStr for Location {
    type Err = StorageError;

    /// `s3://bucket/prefix`, `file:///abs/folder`, or a plain path.
    fn from_str(s: &str) -> Result<Location, StorageError> {
        let invalid = |reason: &str| StorageError::InvalidLocation {
            location: s.to_owned(),
            reason: reason.to_owned(),
        };
        if let Some(rest) = s.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(invalid("no bucket name (expected s3://bucket/prefix)"));
            }
            let prefix = prefix.trim_end_matches('/');
            if !prefix.is_empty() {
                Path::parse(prefix).map_err(|err| invalid(&err.to_string()))?;
            }
            return Ok(Location::S3 {
                bucket: bucket.to_owned(),
                prefix: prefix.to_owned(),
            });
        }
        if s.starts_with("file:") {
            let url = Url::parse(s).map_err(|err| invalid(&err.to_string()))?;
            let path = url
                .to_file_path()
                .map_err(|()| invalid("not an absolute local path"))?;
            return Ok(Location::Local(path));
        }
        if let Some((scheme, _)) = s.split_once("://") {
            return Err(invalid(&format!(
                "unsupported scheme {scheme:?} (expected s3://, file:// or a path)"
            )));
        }
        if s.is_empty() {
            return Err(invalid("empty"));
        }
        Ok(Location::Local(PathBuf::from(s)))
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Local(path) => write!(f, "{}", path.display()),
            Location::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

/// S3 settings that override the `AWS_*` environment (unset fields leave it as it is).
#[derive(Clone, Default)]
pub struct S3Options {
    /// The endpoint of a store other than AWS: `http(s)://host:port` (`AWS_ENDPOINT_URL`).
    pub endpoint: Option<String>,
    /// `AWS_REGION`; AWS's `us-east-1` when neither is set.
    pub region: Option<String>,
    /// `AWS_ACCESS_KEY_ID`.
    pub access_key_id: Option<String>,
    /// `AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key: Option<String>,
}

impl fmt::Debug for S3Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Options")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "***"),
            )
            .finish()
    }
}

/// Why a storage operation failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StorageError {
    /// Occurs when a location is not `s3://bucket/prefix`, `file://...` or a path, or its
    /// folder cannot be created.
    #[error("storage location {location:?}: {reason}")]
    InvalidLocation { location: String, reason: String },
    /// Occurs when a key is empty, absolute, or has an empty, `.` or `..` segment.
    #[error("object key {key:?}: {reason}")]
    InvalidKey { key: String, reason: String },
    /// Occurs when no object has the key.
    #[error("object {key:?} not found")]
    NotFound { key: String },
    /// Occurs when the store fails: I/O, network, credentials, permissions, a missing bucket.
    #[error("object storage: {0}")]
    Store(#[from] object_store::Error),
}

/// Objects under one [`Location`]. Cheap to clone: clones share the connection pool.
#[derive(Debug, Clone)]
pub struct Storage {
    store: Arc<dyn ObjectStore>,
    /// The S3 store again, for presigned URLs; `None` for a local folder.
    signer: Option<Arc<AmazonS3>>,
    /// Prepended to every key (the S3 prefix).
    prefix: Option<Path>,
    location: Location,
}

impl Storage {
    /// Opens `location`; an S3 location reads the `AWS_*` environment, overridden by `s3`.
    /// Nothing is sent over the network yet: a wrong bucket or credentials show at the first
    /// operation.
    pub fn open(location: &Location, s3: &S3Options) -> Result<Storage, StorageError> {
        let invalid = |reason: String| StorageError::InvalidLocation {
            location: location.to_string(),
            reason,
        };
        match location {
            Location::Local(dir) => {
                std::fs::create_dir_all(dir)
                    .map_err(|err| invalid(format!("cannot create the folder: {err}")))?;
                let store = LocalFileSystem::new_with_prefix(dir)
                    .map_err(|err| invalid(err.to_string()))?
                    .with_automatic_cleanup(true);
                Ok(Storage {
                    store: Arc::new(store),
                    signer: None,
                    prefix: None,
                    location: location.clone(),
                })
            }
            Location::S3 { bucket, prefix } => {
                let prefix = match prefix.as_str() {
                    "" => None,
                    prefix => Some(Path::parse(prefix).map_err(|err| invalid(err.to_string()))?),
                };
                let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
                if let Some(endpoint) = &s3.endpoint {
                    builder = builder.with_endpoint(endpoint);
                }
                if let Some(region) = &s3.region {
                    builder = builder.with_region(region);
                }
                if let Some(key_id) = &s3.access_key_id {
                    builder = builder.with_access_key_id(key_id);
                }
                if let Some(secret) = &s3.secret_access_key {
                    builder = builder.with_secret_access_key(secret);
                }
                let endpoint = builder
                    .get_config_value(&object_store::aws::AmazonS3ConfigKey::Endpoint)
                    .unwrap_or_default();
                if endpoint.starts_with("http://") {
                    builder = builder.with_allow_http(true);
                }
                let s3 = Arc::new(builder.build().map_err(|err| invalid(err.to_string()))?);
                Ok(Storage {
                    store: Arc::clone(&s3) as Arc<dyn ObjectStore>,
                    signer: Some(s3),
                    prefix,
                    location: location.clone(),
                })
            }
        }
    }

    /// Where the objects are.
    pub fn location(&self) -> &Location {
        &self.location
    }

    /// Writes `bytes` under `key`, replacing what was there; all or nothing.
    pub async fn put(&self, key: &str, bytes: impl Into<Bytes>) -> Result<(), StorageError> {
        let path = self.path(key)?;
        self.store
            .put(&path, PutPayload::from(bytes.into()))
            .await?;
        Ok(())
    }

    /// The object under `key`; [`StorageError::NotFound`] when there is none.
    pub async fn get(&self, key: &str) -> Result<Bytes, StorageError> {
        let path = self.path(key)?;
        let not_found = |err| match err {
            object_store::Error::NotFound { .. } => StorageError::NotFound {
                key: key.to_owned(),
            },
            other => other.into(),
        };
        let object = self.store.get(&path).await.map_err(not_found)?;
        object.bytes().await.map_err(not_found)
    }

    /// Deletes the object under `key`; no error when there is none.
    pub async fn delete(&self, key: &str) -> Result<(), StorageError> {
        let path = self.path(key)?;
        match self.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(err) => Err(err.into()),
        }
    }

    /// The keys under the folder `prefix` (by whole segments: `results/a` holds `results/a/0`
    /// but not `results/ab/0`), at any depth, sorted; `""` lists everything.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let folder = self.folder(prefix)?;
        let mut keys: Vec<String> = self
            .store
            .list(folder.as_ref())
            .map_ok(|meta| self.key_of(&meta.location))
            .try_collect()
            .await?;
        keys.sort();
        Ok(keys)
    }

    /// Deletes every object under the folder `prefix` (as [`Storage::list`] reads it), in
    /// batches where the store has them; returns how many there were.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<usize, StorageError> {
        let folder = self.folder(prefix)?;
        let paths = self
            .store
            .list(folder.as_ref())
            .map_ok(|meta| meta.location)
            .boxed();
        let deleted = self.store.delete_stream(paths);
        let count = deleted
            .try_fold(0, |count, _| async move { Ok(count + 1) })
            .await?;
        Ok(count)
    }

    /// A URL that lets anyone GET the object under `key` until `expires_in` has passed
    /// (at most 7 days, SigV4's limit), without credentials: for S3 only, `None` for a local
    /// folder (whose objects the API serves itself). The object need not exist yet.
    pub async fn presigned_get(
        &self,
        key: &str,
        expires_in: Duration,
    ) -> Result<Option<Url>, StorageError> {
        let Some(signer) = &self.signer else {
            return Ok(None);
        };
        let path = self.path(key)?;
        let url = signer
            .signed_url(http::Method::GET, &path, expires_in)
            .await?;
        Ok(Some(url))
    }

    /// The store's path of a key, checked.
    fn path(&self, key: &str) -> Result<Path, StorageError> {
        let invalid = |reason: String| StorageError::InvalidKey {
            key: key.to_owned(),
            reason,
        };
        if key.is_empty() {
            return Err(invalid("empty".into()));
        }
        if key.starts_with('/') || key.ends_with('/') {
            return Err(invalid("starts or ends with '/'".into()));
        }
        if key
            .split('/')
            .any(|segment| segment == "." || segment == "..")
        {
            return Err(invalid("has a '.' or '..' segment".into()));
        }
        let full = match &self.prefix {
            None => key.to_owned(),
            Some(prefix) => format!("{prefix}/{key}"),
        };
        Path::parse(full).map_err(|err| invalid(err.to_string()))
    }

    /// The store's path of a folder; `None` for everything under the location.
    fn folder(&self, prefix: &str) -> Result<Option<Path>, StorageError> {
        let prefix = prefix.trim_end_matches('/');
        if prefix.is_empty() {
            return Ok(self.prefix.clone());
        }
        self.path(prefix).map(Some)
    }

    /// The key of a path the store listed.
    fn key_of(&self, path: &Path) -> String {
        match &self.prefix {
            None => path.to_string(),
            Some(prefix) => match path.prefix_match(prefix) {
                Some(parts) => parts
                    .map(|part| part.as_ref().to_owned())
                    .collect::<Vec<_>>()
                    .join("/"),
                None => path.to_string(),
            },
        }
    }
}

#[cfg(test)]
mod tests;
