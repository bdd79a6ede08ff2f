//! The names an image archive will give its images, read before the engine loads it, so a
//! load that would take over another account's name is refused before anything changes.
//!
//! A docker-archive (`docker save`, `podman save`) lists them in `manifest.json` (`RepoTags`
//! of each image); an OCI layout in a tar in `index.json` (the
//! `org.opencontainers.image.ref.name` annotation of each manifest, which must then be a
//! full reference).

use std::io::Read as _;
use std::path::Path;

use serde::Deserialize;

/// Largest `manifest.json` / `index.json` read, in bytes.
const MAX_INDEX_BYTES: u64 = 4 * 1024 * 1024;
const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// What an archive holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Contents {
    /// The names it gives, as written in the archive.
    pub names: Vec<String>,
    /// How many images it holds.
    pub images: usize,
}

#[derive(Deserialize)]
struct DockerEntry {
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct OciIndex {
    #[serde(default)]
    manifests: Vec<OciManifest>,
}

#[derive(Deserialize)]
struct OciManifest {
    #[serde(default)]
    annotations: std::collections::HashMap<String, String>,
}

/// Reads the names in the archive at `path`; an error says, in a sentence, why it is not an
/// archive the engine can load.
pub fn read(path: &Path) -> Result<Contents, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read the upload: {e}"))?;
    let mut archive = tar::Archive::new(file);
    let entries = archive
        .entries()
        .map_err(|e| format!("the upload is not a tar archive: {e}"))?;
    let mut docker: Option<Vec<DockerEntry>> = None;
    let mut oci: Option<OciIndex> = None;
    for entry in entries {
        let entry = entry.map_err(|e| format!("the upload is not a valid tar archive: {e}"))?;
        let path = entry
            .path()
            .map_err(|e| format!("the archive holds a bad path: {e}"))?
            .into_owned();
        let name = path.to_string_lossy();
        let name = name.trim_start_matches("./");
        if name != "manifest.json" && name != "index.json" {
            continue;
        }
        let mut text = String::new();
        entry
            .take(MAX_INDEX_BYTES)
            .read_to_string(&mut text)
            .map_err(|e| format!("cannot read {name} in the archive: {e}"))?;
        if name == "manifest.json" {
            docker = Some(
                serde_json::from_str(&text)
                    .map_err(|e| format!("the archive's manifest.json is not valid: {e}"))?,
            );
        } else {
            oci = Some(
                serde_json::from_str(&text)
                    .map_err(|e| format!("the archive's index.json is not valid: {e}"))?,
            );
        }
    }
    if let Some(entries) = docker {
        return Ok(Contents {
            images: entries.len(),
            names: entries
                .into_iter()
                .flat_map(|e| e.repo_tags.unwrap_or_default())
                .collect(),
        });
    }
    if let Some(index) = oci {
        let mut names = Vec::new();
        for manifest in &index.manifests {
            if let Some(name) = manifest.annotations.get(REF_NAME) {
                if !name.contains('/') && !name.contains(':') {
                    return Err(format!(
                        "the archive names an image only by the tag \"{name}\"; save it with a \
                         full reference (repository:tag), e.g. with `bus images save`"
                    ));
                }
                names.push(name.clone());
            }
        }
        return Ok(Contents {
            images: index.manifests.len(),
            names,
        });
    }
    Err(
        "the upload is neither a docker-archive (no manifest.json) nor an OCI archive (no \
         index.json); make one with `bus images save REF -o FILE` or `podman save`"
            .to_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(files: &[(&str, &str)]) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        let mut builder = tar::Builder::new(file.reopen().unwrap());
        for (name, content) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(content.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder
                .append_data(&mut header, name, content.as_bytes())
                .unwrap();
        }
        builder.finish().unwrap();
        file
    }

    #[test]
    fn docker_archives_name_their_tags() {
        let a = archive(&[
            ("layer.tar", "x"),
            (
                "manifest.json",
                r#"[{"Config":"c.json","RepoTags":["localhost/a:1","r.io/b:2"],"Layers":[]},{"Config":"d.json","RepoTags":null}]"#,
            ),
        ]);
        let contents = read(a.path()).unwrap();
        assert_eq!(contents.names, ["localhost/a:1", "r.io/b:2"]);
        assert_eq!(contents.images, 2);
    }

    #[test]
    fn oci_archives_need_full_names() {
        let a = archive(&[(
            "index.json",
            r#"{"manifests":[{"annotations":{"org.opencontainers.image.ref.name":"localhost/x:1"}}]}"#,
        )]);
        assert_eq!(read(a.path()).unwrap().names, ["localhost/x:1"]);
        let a = archive(&[(
            "index.json",
            r#"{"manifests":[{"annotations":{"org.opencontainers.image.ref.name":"1"}}]}"#,
        )]);
        assert!(read(a.path()).unwrap_err().contains("only by the tag"));
    }

    #[test]
    fn other_uploads_are_refused_with_a_hint() {
        let a = archive(&[("hello.txt", "hi")]);
        assert!(read(a.path()).unwrap_err().contains("bus images save"));
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), vec![7u8; 2000]).unwrap();
        assert!(read(f.path()).is_err());
    }
}
