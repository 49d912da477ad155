//! Reading input images and writing results: size-capped reads, result names, atomic writes.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use outpaint_canvas::Limits;

/// Extensions (lower case) of the files taken from folders and glob patterns.
pub const IMAGE_EXTENSIONS: [&str; 4] = ["jpg", "jpeg", "png", "webp"];

/// Whether `path` has one of [`IMAGE_EXTENSIONS`], in any case.
pub fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Reads an image file, refusing files over `limits.max_file_bytes` before reading them.
pub fn read_image_file(path: &Path, limits: &Limits) -> Result<Vec<u8>> {
    let metadata = fs::metadata(path).context("cannot read")?;
    if metadata.is_dir() {
        bail!("is a folder, not an image file");
    }
    limits.check_file_size(metadata.len())?;
    let file = File::open(path).context("cannot read")?;
    // Read one byte past the limit, so that a file that grew since `metadata` is still caught
    // (by the decoder's size check) without reading all of it.
    let mut bytes = Vec::with_capacity(usize::try_from(metadata.len()).unwrap_or(0));
    file.take(limits.max_file_bytes.saturating_add(1))
        .read_to_end(&mut bytes)
        .context("cannot read")?;
    Ok(bytes)
}

/// The result paths for `n` variations written to `path`: `path` itself for one, else
/// `<stem>-<i>.<ext>` next to it.
pub fn variation_paths(path: &Path, n: u32) -> Vec<PathBuf> {
    if n == 1 {
        return vec![path.to_path_buf()];
    }
    let stem = path.file_stem().unwrap_or_default();
    (0..n)
        .map(|i| {
            let mut name = OsString::from(stem);
            name.push(format!("-{i}"));
            if let Some(extension) = path.extension() {
                name.push(".");
                name.push(extension);
            }
            path.with_file_name(name)
        })
        .collect()
}

/// Writes `bytes` to `path` so that `path` either keeps its old content or gets all of the new
/// one: the data goes to a temporary file in the same folder, is flushed to disk, then renamed
/// over `path`. An interrupted run never leaves a half-written result that a rerun would take
/// for a finished one.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let mut builder = tempfile::Builder::new();
    builder.prefix(".outpaint-").suffix(".tmp");
    // tempfile creates private files (0600); results should get the usual permissions, i.e.
    // 0666 less the umask, like any file a command writes.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(fs::Permissions::from_mode(0o666));
    }
    let mut file = builder.tempfile_in(dir)?;
    file.write_all(bytes)?;
    file.as_file().sync_all()?;
    file.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Whether `a` and `b` name the same existing file.
pub fn same_file(a: &Path, b: &Path) -> bool {
    match (fs::canonicalize(a), fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variation_paths_number_before_the_extension() {
        assert_eq!(
            variation_paths(Path::new("out/a.png"), 1),
            vec![PathBuf::from("out/a.png")]
        );
        assert_eq!(
            variation_paths(Path::new("out/a.b.png"), 2),
            vec![
                PathBuf::from("out/a.b-0.png"),
                PathBuf::from("out/a.b-1.png")
            ]
        );
        assert_eq!(
            variation_paths(Path::new("plain"), 2),
            vec![PathBuf::from("plain-0"), PathBuf::from("plain-1")]
        );
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.png");
        write_atomically(&path, b"one").unwrap();
        write_atomically(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn extensions_are_case_insensitive() {
        assert!(has_image_extension(Path::new("a/B.JPG")));
        assert!(has_image_extension(Path::new("c.webp")));
        assert!(!has_image_extension(Path::new("d.gif")));
        assert!(!has_image_extension(Path::new("png")));
    }
}
