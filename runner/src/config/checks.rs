//! Checks of the run fields that a profile here and a run request (`runs::spec`) both
//! carry: images, environment entries, storage mounts. Each returns the violation as one
//! sentence.

use bus_api::StorageMount;
use bus_api::runs::MAX_STORAGE_PATH_BYTES;

/// Longest image reference.
pub const MAX_IMAGE_BYTES: usize = 512;

/// Checks an image reference (from a request or a profile): at most [`MAX_IMAGE_BYTES`],
/// without spaces or control characters.
pub fn check_image(image: &str) -> Result<(), String> {
    if image.len() > MAX_IMAGE_BYTES {
        return Err(format!("image must be at most {MAX_IMAGE_BYTES} bytes"));
    }
    if image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("image must not contain spaces or control characters".to_owned());
    }
    Ok(())
}

/// Checks one environment entry (from a request or a profile): a non-empty key without `=`,
/// and no NUL byte in key or value.
pub fn check_env(key: &str, value: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("env keys must not be empty".to_owned());
    }
    if key.contains('=') {
        return Err(format!(
            "env key \"{}\" must not contain '='",
            key.escape_debug()
        ));
    }
    if key.contains('\0') {
        return Err("env keys must not contain NUL bytes".to_owned());
    }
    if value.contains('\0') {
        return Err(format!(
            "env[\"{}\"] must not contain NUL bytes",
            key.escape_debug()
        ));
    }
    Ok(())
}

/// Top-level directories storage may not be mounted in: the kernel's and the image's own.
const SYSTEM_DIRS: [&str; 10] = [
    "proc", "sys", "dev", "etc", "bin", "sbin", "usr", "lib", "lib64", "run",
];

/// Checks a storage mount (from a request or a profile) and returns it normalized: an absolute
/// `mount_path` other than `/` and outside the system directories (`/proc`, `/etc`, `/usr`
/// ...), and a relative `subpath`, both without `.`, `..`, empty components or control
/// characters, each at most [`MAX_STORAGE_PATH_BYTES`] bytes.
pub fn check_storage(storage: &StorageMount) -> Result<StorageMount, String> {
    let components = |field: &str, path: &str| -> Result<Vec<String>, String> {
        if path.len() > MAX_STORAGE_PATH_BYTES {
            return Err(format!(
                "{field} must be at most {MAX_STORAGE_PATH_BYTES} bytes"
            ));
        }
        if path.chars().any(char::is_control) {
            return Err(format!("{field} must not contain control characters"));
        }
        let parts: Vec<String> = path
            .split('/')
            .filter(|c| !c.is_empty())
            .map(str::to_owned)
            .collect();
        if let Some(bad) = parts.iter().find(|c| *c == "." || *c == "..") {
            return Err(format!("{field} must not contain \"{bad}\" components"));
        }
        if let Some(long) = parts.iter().find(|c| c.len() > 255) {
            return Err(format!(
                "{field} has a component of {} bytes; at most 255 are allowed",
                long.len()
            ));
        }
        Ok(parts)
    };
    if !storage.mount_path.starts_with('/') {
        return Err("mount_path must be an absolute path, e.g. /data".to_owned());
    }
    let mount = components("mount_path", &storage.mount_path)?;
    if mount.is_empty() {
        return Err("mount_path must not be /; name a directory such as /data".to_owned());
    }
    if let Some(system) = SYSTEM_DIRS.iter().find(|dir| mount[0] == **dir) {
        return Err(format!(
            "mount_path {} is inside /{system}, which the container's system needs; mount the \
             storage at a directory of its own such as /data or /work",
            storage.mount_path.escape_debug()
        ));
    }
    let subpath = match &storage.subpath {
        None => None,
        Some(sub) => {
            if sub.starts_with('/') {
                return Err(format!(
                    "subpath \"{}\" must be relative to the storage root, e.g. \"projects/a\"",
                    sub.escape_debug()
                ));
            }
            let parts = components("subpath", sub)?;
            if parts.is_empty() {
                return Err(
                    "subpath must name a directory; leave it out to mount the storage root"
                        .to_owned(),
                );
            }
            Some(parts.join("/"))
        }
    };
    Ok(StorageMount {
        mount_path: format!("/{}", mount.join("/")),
        subpath,
    })
}
