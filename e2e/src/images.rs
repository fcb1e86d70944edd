//! Images without an image store: each image repository names binaries of this
//! workspace and the config an OCI image would carry (entrypoint, cmd, env,
//! working dir). The table is `e2e/images.json`; the binaries come from
//! `--bin-dir` (the cargo target dir).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Image {
    /// Installed at `/usr/local/bin/<name>`.
    pub binaries: Vec<String>,
    #[serde(default)]
    pub entrypoint: Vec<String>,
    #[serde(default)]
    pub cmd: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub working_dir: String,
}

#[derive(Debug)]
pub struct Images {
    by_repository: BTreeMap<String, Image>,
    bin_dir: PathBuf,
}

impl Images {
    pub fn load(table: &Path, bin_dir: PathBuf) -> Result<Images> {
        let by_repository: BTreeMap<String, Image> = serde_json::from_slice(
            &std::fs::read(table).with_context(|| format!("read {}", table.display()))?,
        )
        .with_context(|| format!("parse {}", table.display()))?;
        let images = Images {
            by_repository,
            bin_dir,
        };
        for image in images.by_repository.values() {
            for b in &image.binaries {
                let p = images.bin_dir.join(b);
                if !p.is_file() {
                    bail!("image binary {} is missing", p.display());
                }
            }
        }
        Ok(images)
    }

    /// The image of a reference `repo[:tag][@digest]`.
    pub fn get(&self, reference: &str) -> Result<&Image> {
        let repo = reference.split('@').next().unwrap_or(reference);
        let repo = match repo.rfind(':') {
            Some(i) if !repo[i..].contains('/') => &repo[..i],
            _ => repo,
        };
        self.by_repository
            .get(repo)
            .with_context(|| format!("image {reference}: not in the image table (ErrImagePull)"))
    }

    pub fn binaries(&self, image: &Image) -> Vec<(String, PathBuf)> {
        image
            .binaries
            .iter()
            .map(|b| (b.clone(), self.bin_dir.join(b)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_match_by_repository() {
        let image = Image {
            binaries: vec![],
            entrypoint: vec![],
            cmd: vec![],
            env: BTreeMap::new(),
            working_dir: String::new(),
        };
        let images = Images {
            by_repository: [("registry:5000/dduomq/broker".to_string(), image)].into(),
            bin_dir: PathBuf::new(),
        };
        for r in [
            "registry:5000/dduomq/broker",
            "registry:5000/dduomq/broker:0.1.0",
            "registry:5000/dduomq/broker@sha256:00ff",
            "registry:5000/dduomq/broker:0.1.0@sha256:00ff",
        ] {
            assert!(images.get(r).is_ok(), "{r}");
        }
        let err = images.get("registry:5000/other:1").unwrap_err();
        assert!(format!("{err}").contains("ErrImagePull"), "{err}");
    }
}
