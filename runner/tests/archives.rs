//! Image archives against a real Podman engine: `GET .../archive?format=oci` answers an OCI
//! layout, and `POST .../images/load-from-storage` loads an archive from the account's own
//! storage volume only.

mod common;

use std::io::Read as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use axum::http::{Method, StatusCode};
use bus_api::auth::Scope;
use bus_runner::AppState;
use bus_runner::auth::Keys;
use bus_runner::config::Config;
use bus_runner::engine::Engine;
use common::{Podman, call};
use serde_json::json;

const IMAGES: &str = "/api/v1/containers/images";
const FROM_STORAGE: &str = "/api/v1/containers/images/load-from-storage";

/// Removes the account's volume and the image name a test made, even when it fails.
struct Cleanup<'a> {
    podman: &'a Podman,
    volume: String,
    image: String,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        for args in [
            vec!["volume", "rm", "--force", &self.volume],
            vec!["rmi", &self.image],
        ] {
            let _ = Command::new("podman")
                .arg("--url")
                .arg(self.podman.url())
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// The entries of a tar, with `index.json`'s text.
fn entries(bytes: &[u8]) -> (Vec<String>, String) {
    let mut archive = tar::Archive::new(bytes);
    let mut names = Vec::new();
    let mut index = String::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        if name == "index.json" {
            entry.read_to_string(&mut index).unwrap();
        }
        names.push(name);
    }
    (names, index)
}

fn encoded(reference: &str) -> String {
    url::form_urlencoded::byte_serialize(reference.as_bytes()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn oci_archives_save_and_load_from_the_accounts_storage_only() {
    let podman = Podman::start();
    // A runner app doing image work on the engine, as `bus-runner serve` connects it.
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::load_or_create(&dir.path().join("state")).unwrap();
    let state = AppState::new(
        keys.clone(),
        Config::builtin(),
        Engine::connect(&podman.url()).unwrap(),
    );
    state.images().connect_engine(state.engine().clone());
    let app = bus_runner::app(state);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let account = format!("archives-{}-{nanos}", std::process::id());
    let reference = format!("localhost/{account}/app:1");
    let _cleanup = Cleanup {
        podman: &podman,
        volume: bus_runner::runs::storage::volume_name(&account),
        image: reference.clone(),
    };
    let token = keys.mint(
        &account,
        &[Scope::Read, Scope::ImageRead, Scope::ImageWrite],
        Duration::from_secs(300),
    );
    let token = Some(token.as_str());
    let tagged = call(
        &app,
        Method::POST,
        &format!("{IMAGES}/{}/tag", encoded("localhost/busybox:latest")),
        token,
        Some(json!({"target": reference})),
    )
    .await;
    assert_eq!(tagged.status, StatusCode::CREATED, "{:?}", tagged.body);

    let archive = |format: &str| {
        let uri = format!("{IMAGES}/{}/archive{format}", encoded(&reference));
        let app = app.clone();
        async move { call(&app, Method::GET, &uri, token, None).await }
    };
    let oci = archive("?format=oci").await;
    assert_eq!(oci.status, StatusCode::OK);
    let (names, index) = entries(&oci.body);
    assert!(names.contains(&"oci-layout".to_owned()), "{names:?}");
    assert!(!names.contains(&"manifest.json".to_owned()), "{names:?}");
    let index: serde_json::Value = serde_json::from_str(&index).unwrap();
    assert_eq!(
        index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
        json!(reference)
    );
    let docker = archive("").await;
    assert_eq!(docker.status, StatusCode::OK);
    assert!(
        entries(&docker.body)
            .0
            .contains(&"manifest.json".to_owned())
    );
    let bad = archive("?format=zip").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.json()["code"], "invalid_request");

    let load = |path: &str| {
        let app = app.clone();
        let body = json!({ "path": path });
        async move { call(&app, Method::POST, FROM_STORAGE, token, Some(body)).await }
    };
    // Refused before anything is opened (or the volume made).
    for (path, title) in [
        ("/etc/passwd", "Not a storage path"),
        ("a/../../etc/passwd", "Not a storage path"),
        ("", "Not a storage path"),
    ] {
        let reply = load(path).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{path}");
        let problem = reply.json();
        assert_eq!(
            (&problem["code"], &problem["title"]),
            (&json!("invalid_request"), &json!(title)),
            "{path}: {problem}"
        );
        assert!(
            problem["guidance"]
                .as_str()
                .unwrap()
                .contains("relative to the storage root")
        );
    }
    let missing = load("app.tar").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.json()["code"], "not_found");

    // The archive, written into the account's volume as a run would, loads back.
    let out = Command::new("podman")
        .arg("--url")
        .arg(podman.url())
        .args(["volume", "inspect", "--format", "{{.Mountpoint}}"])
        .arg(bus_runner::runs::storage::volume_name(&account))
        .output()
        .unwrap();
    let root = std::path::PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    std::fs::create_dir_all(root.join("images")).unwrap();
    std::fs::write(root.join("images/app.tar"), &oci.body).unwrap();
    std::os::unix::fs::symlink(root.join("images/app.tar"), root.join("link.tar")).unwrap();
    let removed = call(
        &app,
        Method::DELETE,
        &format!("{IMAGES}/{}", encoded(&reference)),
        token,
        None,
    )
    .await;
    assert_eq!(removed.status, StatusCode::NO_CONTENT);
    let loaded = load("images/app.tar").await;
    assert_eq!(loaded.status, StatusCode::OK, "{:?}", loaded.body);
    let references = loaded.json()["images"][0]["references"].clone();
    assert!(
        references.as_array().unwrap().contains(&json!(reference)),
        "the archive gave the image the name it was saved by: {references}"
    );
    let link = load("link.tar").await;
    assert_eq!(link.status, StatusCode::BAD_REQUEST);
    assert_eq!(link.json()["title"], "Symlink in the storage path");
    let dir = load("images").await;
    assert_eq!(dir.json()["title"], "Not a file");
}
