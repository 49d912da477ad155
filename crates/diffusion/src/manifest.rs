//! Model manifests (one TOML file per model in the workspace's `models/` folder, embedded at
//! build time) and [`ModelStore`], which finds a model's files locally or pulls them.

use std::path::{Path, PathBuf};

use hf_hub::{Cache, Repo, RepoType};
use serde::{Deserialize, Serialize};

use crate::clip::ClipTextConfig;
use crate::config::{UNetConfig, VaeConfig};
use crate::scheduler::SchedulerKind;
use crate::{DiffusionError, Result};

include!(concat!(env!("OUT_DIR"), "/manifests.rs"));

/// The network family a checkpoint belongs to; fine-tunes share their base's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Architecture {
    /// SD 1.x: CLIP ViT-L/14 text encoder, 9-channel UNet, 512².
    Sd15,
    /// SD 2.x: OpenCLIP ViT-H/14 text encoder, linear projections, 512² (inpainting).
    Sd2,
    /// SDXL: CLIP ViT-L/14 and OpenCLIP ViT-bigG/14 text encoders, size/crop conditioning,
    /// 1024².
    Sdxl,
}

impl Architecture {
    /// The published UNet config of the architecture (for random weights).
    pub fn unet_config(self) -> UNetConfig {
        match self {
            Architecture::Sd15 => UNetConfig::sd15_inpaint(),
            Architecture::Sd2 => UNetConfig::sd2_inpaint(),
            Architecture::Sdxl => UNetConfig::sdxl_inpaint(),
        }
    }

    /// The published VAE config of the architecture.
    pub fn vae_config(self) -> VaeConfig {
        match self {
            Architecture::Sd15 | Architecture::Sd2 => VaeConfig::sd(),
            Architecture::Sdxl => VaeConfig::sdxl(),
        }
    }

    /// The published config of the (first) text encoder of the architecture.
    pub fn text_config(self) -> ClipTextConfig {
        match self {
            Architecture::Sd15 | Architecture::Sdxl => ClipTextConfig::vit_l14(),
            Architecture::Sd2 => ClipTextConfig::vit_h14(),
        }
    }

    /// The published config of the second text encoder (with projection), for SDXL.
    pub fn text_config_2(self) -> Option<ClipTextConfig> {
        match self {
            Architecture::Sd15 | Architecture::Sd2 => None,
            Architecture::Sdxl => Some(ClipTextConfig::vit_big_g14()),
        }
    }
}

/// Default generation settings of a model.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    /// Denoising steps.
    pub steps: u32,
    /// Classifier-free guidance scale.
    pub guidance_scale: f32,
    /// Scheduler.
    pub scheduler: SchedulerKind,
}

/// One supported model: where to get it and how to run it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The name users pass to `--model` (the file is `models/NAME.toml`).
    pub name: String,
    /// One line for `outpaint models list`.
    pub description: String,
    /// Hugging Face hub repository.
    pub repo: String,
    /// Pinned revision (commit or branch).
    pub revision: String,
    /// Network family.
    pub architecture: Architecture,
    /// Native resolution (pixels per side); the working canvas is fitted to its square.
    pub resolution: u32,
    /// Approximate size of `files`, for the listing before a download.
    pub download_bytes: u64,
    /// The files to download, paths in the repository (diffusers layout).
    pub files: Vec<String>,
    /// Default settings.
    pub defaults: Defaults,
}

impl Manifest {
    /// Parses a manifest.
    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        toml::from_str(text).map_err(|e| DiffusionError::config(format!("manifest {origin}"), e))
    }

    /// Every built-in manifest, sorted by name.
    pub fn builtin() -> Result<Vec<Manifest>> {
        let mut all = BUILTIN
            .iter()
            .map(|(file, text)| {
                let m = Manifest::parse(text, file)?;
                if format!("{}.toml", m.name) != *file {
                    return Err(DiffusionError::config(
                        format!("manifest {file}"),
                        format!("name {:?} does not match the file name", m.name),
                    ));
                }
                Ok(m)
            })
            .collect::<Result<Vec<_>>>()?;
        all.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(all)
    }

    /// The built-in manifest called `name`.
    pub fn find(name: &str) -> Result<Manifest> {
        let all = Manifest::builtin()?;
        let names = all
            .iter()
            .map(|m| m.name.clone())
            .collect::<Vec<_>>()
            .join(", ");
        all.into_iter()
            .find(|m| m.name == name)
            .ok_or(DiffusionError::UnknownModel {
                name: name.to_string(),
                supported: names,
            })
    }

    /// The pixel budget of one generation: the native resolution squared.
    pub fn pixel_budget(&self) -> u64 {
        u64::from(self.resolution) * u64::from(self.resolution)
    }
}

/// Finds models in the standard Hugging Face cache (`HF_HOME`, else `~/.cache/huggingface`)
/// and downloads them into it.
#[derive(Debug, Clone)]
pub struct ModelStore {
    cache: Cache,
}

impl Default for ModelStore {
    fn default() -> Self {
        ModelStore::from_env()
    }
}

impl ModelStore {
    /// The cache named by the environment (`HF_HOME`).
    pub fn from_env() -> Self {
        ModelStore {
            cache: Cache::from_env(),
        }
    }

    /// A store over the cache rooted at `hub_dir` (the `hub` folder).
    pub fn at(hub_dir: PathBuf) -> Self {
        ModelStore {
            cache: Cache::new(hub_dir),
        }
    }

    fn repo(m: &Manifest) -> Repo {
        Repo::with_revision(m.repo.clone(), RepoType::Model, m.revision.clone())
    }

    /// The local diffusers-layout folder holding all of the model's files, or
    /// [`DiffusionError::NotInstalled`] naming the pull command.
    pub fn locate(&self, m: &Manifest) -> Result<PathBuf> {
        let repo = self.cache.repo(Self::repo(m));
        let mut root = None;
        for file in &m.files {
            let Some(path) = repo.get(file) else {
                return Err(DiffusionError::NotInstalled {
                    name: m.name.clone(),
                    detail: format!("{file} is not in {}", self.cache.path().display()),
                });
            };
            if root.is_none() {
                root = strip_suffix(&path, file);
            }
        }
        root.ok_or_else(|| DiffusionError::NotInstalled {
            name: m.name.clone(),
            detail: "no files listed".into(),
        })
    }

    /// Bytes on disk of an installed model (following the cache's links), `None` if absent.
    pub fn installed_bytes(&self, m: &Manifest) -> Option<u64> {
        let dir = self.locate(m).ok()?;
        Some(
            m.files
                .iter()
                .filter_map(|f| std::fs::metadata(dir.join(f)).ok())
                .map(|md| md.len())
                .sum(),
        )
    }

    /// Downloads the model's files into the cache (resumes what is there, shows progress).
    /// Honours `HF_HOME`, `HF_TOKEN` and refuses under `HF_HUB_OFFLINE=1`.
    pub fn pull(&self, m: &Manifest, progress: bool) -> Result<PathBuf> {
        if std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
        {
            return Err(DiffusionError::Download(
                "HF_HUB_OFFLINE is set: downloads are disabled".into(),
            ));
        }
        let mut builder =
            hf_hub::api::sync::ApiBuilder::from_cache(self.cache.clone()).with_progress(progress);
        if let Ok(token) = std::env::var("HF_TOKEN") {
            builder = builder.with_token(Some(token));
        }
        let api = builder
            .build()
            .map_err(|e| DiffusionError::Download(e.to_string()))?;
        let repo = api.repo(Self::repo(m));
        for file in &m.files {
            repo.get(file)
                .map_err(|e| DiffusionError::Download(format!("{}/{file}: {e}", m.repo)))?;
        }
        self.locate(m)
    }
}

/// `path` less the trailing components of `relative`.
fn strip_suffix(path: &Path, relative: &str) -> Option<PathBuf> {
    let mut p = path.to_path_buf();
    for _ in Path::new(relative).components() {
        p = p.parent()?.to_path_buf();
    }
    Some(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_builtin_manifests_parse() {
        let all = Manifest::builtin().unwrap();
        let names: Vec<_> = all.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["sd15-inpaint", "sd2-inpaint", "sdxl-inpaint"]);
        for m in &all {
            assert!(m.files.iter().any(|f| f.starts_with("unet/")), "{}", m.name);
            assert!(m.defaults.steps > 0);
            m.architecture.unet_config().levels().unwrap();
        }
    }

    #[test]
    fn unknown_model_lists_supported_ones() {
        let e = Manifest::find("nope").unwrap_err().to_string();
        assert!(e.contains("sd15-inpaint"), "{e}");
    }

    #[test]
    fn missing_model_names_the_pull_command() {
        let dir = std::env::temp_dir().join(format!("outpaint-empty-hub-{}", std::process::id()));
        let store = ModelStore::at(dir);
        let e = store
            .locate(&Manifest::find("sd15-inpaint").unwrap())
            .unwrap_err();
        assert!(
            e.to_string().contains("outpaint models pull sd15-inpaint"),
            "{e}"
        );
    }
}
