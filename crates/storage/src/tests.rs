//! One suite run against a local folder and against a real S3-protocol server (moto, started
//! by `outpaint-test-servers` once for this test binary, a fresh bucket per test).

use outpaint_test_servers::S3Server;
use tempfile::TempDir;

use super::*;

/// Storage at a fresh location of one backend; `open(name)` opens a sibling location.
enum Fixture {
    Local(TempDir),
    S3 { bucket: String, options: S3Options },
}

impl Fixture {
    fn local() -> Fixture {
        Fixture::Local(tempfile::tempdir().unwrap())
    }

    async fn s3() -> Fixture {
        let server = S3Server::shared();
        let options = S3Options {
            endpoint: Some(server.endpoint()),
            region: Some("us-east-1".into()),
            access_key_id: Some("test-key".into()),
            secret_access_key: Some("test-secret".into()),
        };
        Fixture::S3 {
            bucket: server.create_bucket().await,
            options,
        }
    }

    /// The location named `name` (a folder, or a prefix of two segments).
    fn open(&self, name: &str) -> Storage {
        match self {
            Fixture::Local(dir) => {
                let location = Location::Local(dir.path().join(name));
                Storage::open(&location, &S3Options::default()).unwrap()
            }
            Fixture::S3 { bucket, options } => {
                let location = format!("s3://{bucket}/outpaint/{name}").parse().unwrap();
                Storage::open(&location, options).unwrap()
            }
        }
    }
}

/// Makes each case a test against a local folder and one against S3.
macro_rules! storage_contract {
    ($($case:ident),* $(,)?) => {
        mod local {
            $(
                #[tokio::test]
                async fn $case() {
                    super::$case(super::Fixture::local()).await;
                }
            )*
        }
        mod s3 {
            $(
                #[tokio::test]
                async fn $case() {
                    super::$case(super::Fixture::s3().await).await;
                }
            )*
        }
    };
}

storage_contract!(
    put_then_get_returns_the_bytes,
    a_missing_key_is_not_found,
    delete_is_idempotent,
    list_is_by_whole_segments_and_sorted,
    delete_prefix_removes_a_folder,
    bad_keys_are_refused,
    locations_do_not_see_each_other,
    presigned_urls_are_for_s3_only,
);

async fn put_then_get_returns_the_bytes(f: Fixture) {
    let storage = f.open("results");
    let image: Vec<u8> = (0..1_500_000u32).map(|i| (i % 251) as u8).collect();
    storage.put("t1/0.png", image.clone()).await.unwrap();
    assert_eq!(storage.get("t1/0.png").await.unwrap(), image);
    storage.put("t1/0.png", &b"replaced"[..]).await.unwrap();
    assert_eq!(storage.get("t1/0.png").await.unwrap(), &b"replaced"[..]);
    storage.put("t1/empty", Bytes::new()).await.unwrap();
    assert!(storage.get("t1/empty").await.unwrap().is_empty());
}

async fn a_missing_key_is_not_found(f: Fixture) {
    let storage = f.open("results");
    let err = storage.get("nope/0.png").await.unwrap_err();
    assert!(
        matches!(err, StorageError::NotFound { ref key } if key == "nope/0.png"),
        "{err:?}"
    );
}

async fn delete_is_idempotent(f: Fixture) {
    let storage = f.open("results");
    storage.put("t1/0.png", &b"x"[..]).await.unwrap();
    storage.delete("t1/0.png").await.unwrap();
    assert!(matches!(
        storage.get("t1/0.png").await,
        Err(StorageError::NotFound { .. })
    ));
    storage.delete("t1/0.png").await.unwrap();
    storage.delete("never/was").await.unwrap();
}

async fn list_is_by_whole_segments_and_sorted(f: Fixture) {
    let storage = f.open("results");
    assert!(storage.list("").await.unwrap().is_empty());
    for key in ["a/1.png", "a/0.png", "a/deep/x", "ab/0.png", "b"] {
        storage.put(key, &b"x"[..]).await.unwrap();
    }
    assert_eq!(
        storage.list("a").await.unwrap(),
        ["a/0.png", "a/1.png", "a/deep/x"]
    );
    assert_eq!(
        storage.list("a/").await.unwrap(),
        storage.list("a").await.unwrap()
    );
    assert_eq!(
        storage.list("").await.unwrap(),
        ["a/0.png", "a/1.png", "a/deep/x", "ab/0.png", "b"]
    );
    assert!(storage.list("missing").await.unwrap().is_empty());
}

async fn delete_prefix_removes_a_folder(f: Fixture) {
    let storage = f.open("results");
    for key in ["t1/0.png", "t1/1.png", "t10/0.png"] {
        storage.put(key, &b"x"[..]).await.unwrap();
    }
    assert_eq!(storage.delete_prefix("t1").await.unwrap(), 2);
    assert_eq!(storage.list("").await.unwrap(), ["t10/0.png"]);
    assert_eq!(storage.delete_prefix("t1").await.unwrap(), 0);
}

async fn bad_keys_are_refused(f: Fixture) {
    let storage = f.open("results");
    for key in [
        "",
        "/abs",
        "trailing/",
        "a//b",
        "../escape",
        "a/../../b",
        "./a",
    ] {
        let err = storage.put(key, &b"x"[..]).await.unwrap_err();
        assert!(
            matches!(err, StorageError::InvalidKey { .. }),
            "{key:?}: {err:?}"
        );
        let err = storage.get(key).await.unwrap_err();
        assert!(
            matches!(err, StorageError::InvalidKey { .. }),
            "{key:?}: {err:?}"
        );
    }
    assert!(matches!(
        storage.list("../x").await,
        Err(StorageError::InvalidKey { .. })
    ));
}

async fn locations_do_not_see_each_other(f: Fixture) {
    let (results, inputs) = (f.open("results"), f.open("inputs"));
    results.put("t1/0.png", &b"result"[..]).await.unwrap();
    inputs.put("t1/0.png", &b"input"[..]).await.unwrap();
    assert_eq!(results.get("t1/0.png").await.unwrap(), &b"result"[..]);
    assert_eq!(inputs.list("").await.unwrap(), ["t1/0.png"]);
    inputs.delete_prefix("").await.unwrap();
    assert_eq!(results.list("").await.unwrap(), ["t1/0.png"]);
}

async fn presigned_urls_are_for_s3_only(f: Fixture) {
    let storage = f.open("results");
    storage.put("t1/0.png", &b"pixels"[..]).await.unwrap();
    let url = storage
        .presigned_get("t1/0.png", Duration::from_secs(600))
        .await
        .unwrap();
    match (&f, url) {
        (Fixture::Local(_), url) => assert_eq!(url, None),
        (Fixture::S3 { .. }, Some(url)) => {
            let query = url.query().unwrap_or_default();
            assert!(query.contains("X-Amz-Signature="), "{url}");
            assert!(query.contains("X-Amz-Expires=600"), "{url}");
            let fetched = reqwest::get(url).await.unwrap();
            assert!(fetched.status().is_success(), "{}", fetched.status());
            assert_eq!(fetched.bytes().await.unwrap(), &b"pixels"[..]);
        }
        (Fixture::S3 { .. }, None) => panic!("S3 gives a presigned URL"),
    }
}

#[test]
fn locations_parse() {
    let s3 = |bucket: &str, prefix: &str| Location::S3 {
        bucket: bucket.into(),
        prefix: prefix.into(),
    };
    let cases = [
        ("s3://bucket/prefix", s3("bucket", "prefix")),
        ("s3://bucket/a/b/", s3("bucket", "a/b")),
        ("s3://bucket", s3("bucket", "")),
        ("s3://bucket/", s3("bucket", "")),
        (
            "/var/lib/outpaint",
            Location::Local("/var/lib/outpaint".into()),
        ),
        ("data/results", Location::Local("data/results".into())),
        (
            "file:///srv/results",
            Location::Local("/srv/results".into()),
        ),
    ];
    for (text, expected) in cases {
        assert_eq!(text.parse::<Location>().unwrap(), expected, "{text}");
    }
    for bad in ["s3://", "s3:///prefix", "s3://b/a//b", "gs://bucket/x", ""] {
        let err = bad.parse::<Location>().unwrap_err();
        assert!(
            matches!(err, StorageError::InvalidLocation { .. }),
            "{bad}: {err:?}"
        );
    }
    assert_eq!(s3("b", "p").to_string(), "s3://b/p");
}

#[test]
fn secrets_stay_out_of_debug() {
    let options = S3Options {
        secret_access_key: Some("hunter2".into()),
        ..S3Options::default()
    };
    assert!(!format!("{options:?}").contains("hunter2"));
}

#[tokio::test]
async fn a_missing_bucket_is_a_store_error() {
    let server = S3Server::shared();
    let options = S3Options {
        endpoint: Some(server.endpoint()),
        region: Some("us-east-1".into()),
        access_key_id: Some("k".into()),
        secret_access_key: Some("s".into()),
    };
    let location = "s3://no-such-bucket/x".parse().unwrap();
    let storage = Storage::open(&location, &options).unwrap();
    let err = storage.put("a", &b"x"[..]).await.unwrap_err();
    assert!(matches!(err, StorageError::Store(_)), "{err:?}");
}
