//! Result images on disk: `<data-dir>/results/<task id>/<token>-<index>[-wm].<ext>`, where the
//! token is random per attempt, so a result URL cannot be guessed from the task id.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use outpaint_engine::Expanded;

use super::tasks::{ResultRecord, StoredImage};

/// The results folder.
#[derive(Debug, Clone)]
pub struct ResultFiles {
    dir: PathBuf,
}

impl ResultFiles {
    /// Files under `dir`, created if missing.
    pub fn open(dir: PathBuf) -> io::Result<Self> {
        fs::create_dir_all(&dir)?;
        Ok(ResultFiles { dir })
    }

    /// Writes a task's images (and watermarked copies), each flushed to disk before this
    /// returns, and says where they are. Blocking.
    pub fn write(&self, task_id: &str, expanded: &Expanded) -> io::Result<ResultRecord> {
        let task_dir = self.dir.join(task_id);
        fs::create_dir_all(&task_dir)?;
        let token = uuid::Uuid::new_v4().simple().to_string();
        let ext = expanded.format.extension();
        let mut images = Vec::with_capacity(expanded.images.len());
        for (index, bytes) in expanded.images.iter().enumerate() {
            let name = format!("{token}-{index}.{ext}");
            write_synced(&task_dir.join(&name), bytes)?;
            let watermark_file = match expanded.watermarked.get(index) {
                Some(marked) => {
                    let name = format!("{token}-{index}-wm.{ext}");
                    write_synced(&task_dir.join(&name), marked)?;
                    Some(format!("{task_id}/{name}"))
                }
                None => None,
            };
            images.push(StoredImage {
                file: format!("{task_id}/{name}"),
                watermark_file,
            });
        }
        File::open(&task_dir)?.sync_all()?;
        Ok(ResultRecord { images })
    }

    /// Deletes the files of `record` (a result that will not be used).
    pub fn remove(&self, record: &ResultRecord) {
        for image in &record.images {
            for file in std::iter::once(&image.file).chain(&image.watermark_file) {
                let _ = fs::remove_file(self.dir.join(file));
            }
        }
    }

    /// Deletes everything of a task.
    pub fn remove_task(&self, task_id: &str) -> io::Result<()> {
        if !is_safe_name(task_id) {
            return Ok(());
        }
        match fs::remove_dir_all(self.dir.join(task_id)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// The file behind a result URL's last two segments; `None` for names this server never
    /// makes (so `..` and friends never reach the file system).
    pub fn path(&self, task_id: &str, file: &str) -> Option<PathBuf> {
        (is_safe_name(task_id) && is_safe_name(file)).then(|| self.dir.join(task_id).join(file))
    }
}

fn is_safe_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
}

fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = File::create(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_names_the_server_makes_resolve() {
        let files = ResultFiles {
            dir: PathBuf::from("/data/results"),
        };
        assert!(files.path("abc123", "f00d-0.png").is_some());
        for (task, file) in [
            ("..", "x.png"),
            ("abc", "../x"),
            ("abc", ".hidden"),
            ("a/b", "x"),
            ("abc", ""),
        ] {
            assert!(files.path(task, file).is_none(), "{task}/{file}");
        }
    }
}
