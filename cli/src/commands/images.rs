//! `bus images ls|inspect|rm|tag|pull|push|load|save`: the account's images.
//!
//! Registry credentials come from a file (`--credentials-file`, mode 0600, JSON
//! `{"username": ..., "password": ...}`), never from the command line, and travel only in the
//! request to busd.

use std::io::{IsTerminal as _, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use bus::proto::images::v1 as pb;
use bus::proto::images::v1::images_service_client::ImagesServiceClient;
use bus::timestamp::timestamp_rfc3339 as rfc3339;
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::io::AsyncReadExt as _;

use crate::context::Ctx;
use crate::error::CliError;
use crate::progress::{Layers, Transfer};
use crate::render::{self, Format, OutputArgs};

/// Bytes per upload message.
pub const CHUNK: usize = 64 * 1024;

/// Images: what the account pulled, loaded, built or tagged, and the public ones.
#[derive(Debug, clap::Subcommand)]
pub enum Images {
    /// List the account's images and the public ones.
    Ls(LsArgs),
    /// Show one image: references, labels, times, manifests, config, layers, size.
    Inspect(InspectArgs),
    /// Remove the account's name of an image (the image goes when nobody names it).
    Rm(RmArgs),
    /// Give an image a new name, e.g. a registry name to push it under.
    Tag(TagArgs),
    /// Pull an image from a registry.
    Pull(RegistryArgs),
    /// Push an image (a name the account holds) to its registry.
    Push(RegistryArgs),
    /// Load the images of a docker or OCI archive, from a file or from the account's storage;
    /// prints the names loaded.
    Load(LoadArgs),
    /// Save an image as a docker-archive or an OCI archive (--format oci).
    Save(SaveArgs),
}

impl Images {
    /// Runs the command; returns the exit code.
    pub async fn run(self, ctx: &Ctx) -> Result<u8, CliError> {
        match self {
            Images::Ls(args) => args.run(ctx).await,
            Images::Inspect(args) => args.run(ctx).await,
            Images::Rm(args) => args.run(ctx).await,
            Images::Tag(args) => args.run(ctx).await,
            Images::Pull(args) => args.run(ctx, false).await,
            Images::Push(args) => args.run(ctx, true).await,
            Images::Load(args) => args.run(ctx).await,
            Images::Save(args) => args.run(ctx).await,
        }
    }
}

fn client(ctx: &Ctx) -> ImagesServiceClient<tonic::transport::Channel> {
    ImagesServiceClient::new(ctx.channel())
}

/// A byte count for people: `2.1 MB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// The JSON shape of an image (`bus images ls -o json` prints an array of these).
#[derive(Debug, Serialize)]
pub struct ImageJson {
    id: String,
    references: Vec<String>,
    created_at: Option<String>,
    updated_at: Option<String>,
    size_bytes: u64,
    public: bool,
}

impl From<&pb::Image> for ImageJson {
    fn from(i: &pb::Image) -> Self {
        ImageJson {
            id: i.id.clone(),
            references: i.references.clone(),
            created_at: rfc3339(i.created_at.as_ref()),
            updated_at: rfc3339(i.updated_at.as_ref()),
            size_bytes: i.size_bytes,
            public: i.public,
        }
    }
}

fn short_id(id: &str) -> String {
    id.trim_start_matches("sha256:").chars().take(12).collect()
}

/// Lists images.
#[derive(Debug, clap::Args)]
pub struct LsArgs {
    #[command(flatten)]
    output: OutputArgs,
}

impl LsArgs {
    async fn run(self, ctx: &Ctx) -> Result<u8, CliError> {
        let images = client(ctx)
            .list_images(ctx.request(pb::ListImagesRequest {}))
            .await?
            .into_inner()
            .images;
        let now = OffsetDateTime::now_utc();
        self.output.print_rows(
            &images,
            |image| &image.id,
            |images| images.iter().map(ImageJson::from).collect::<Vec<_>>(),
            &["ID", "REFERENCES", "SIZE", "CREATED", ""],
            |i| {
                vec![
                    short_id(&i.id),
                    if i.references.is_empty() {
                        "<none>".to_owned()
                    } else {
                        i.references.join(", ")
                    },
                    human_bytes(i.size_bytes),
                    render::ago(i.created_at.as_ref(), now),
                    if i.public { "public" } else { "" }.to_owned(),
                ]
            },
        )?;
        Ok(0)
    }
}

/// Inspects an image.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// A reference (e.g. localhost/app:1) or an image id.
    #[arg(value_name = "REF")]
    reference: String,
    #[command(flatten)]
    output: render::FormatArg,
}

#[derive(Serialize)]
struct DetailJson<'a> {
    id: &'a str,
    references: &'a [String],
    labels: std::collections::BTreeMap<&'a str, &'a str>,
    created_at: Option<String>,
    updated_at: Option<String>,
    target: TargetJson<'a>,
    manifests: Vec<ManifestJson<'a>>,
    config: Option<ConfigJson<'a>>,
    layers: &'a [String],
    content_size_bytes: u64,
    public: bool,
}

#[derive(Serialize)]
struct TargetJson<'a> {
    media_type: Option<&'a str>,
    digest: Option<&'a str>,
}

#[derive(Serialize)]
struct ManifestJson<'a> {
    digest: &'a str,
    platform: &'a str,
}

#[derive(Serialize)]
struct ConfigJson<'a> {
    env: &'a [String],
    cmd: &'a [String],
    entrypoint: &'a [String],
    working_dir: Option<&'a str>,
    user: Option<&'a str>,
    exposed_ports: &'a [String],
    os: &'a str,
    architecture: &'a str,
}

fn non_empty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

impl InspectArgs {
    async fn run(self, ctx: &Ctx) -> Result<u8, CliError> {
        let image = client(ctx)
            .inspect_image(ctx.request(pb::InspectImageRequest {
                reference: self.reference,
            }))
            .await?
            .into_inner()
            .image
            .unwrap_or_default();
        let json = DetailJson {
            id: &image.id,
            references: &image.references,
            labels: image
                .labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect(),
            created_at: rfc3339(image.created_at.as_ref()),
            updated_at: rfc3339(image.updated_at.as_ref()),
            target: TargetJson {
                media_type: non_empty(&image.target_media_type),
                digest: non_empty(&image.target_digest),
            },
            manifests: image
                .manifests
                .iter()
                .map(|m| ManifestJson {
                    digest: &m.digest,
                    platform: &m.platform,
                })
                .collect(),
            config: image.config.as_ref().map(|c| ConfigJson {
                env: &c.env,
                cmd: &c.cmd,
                entrypoint: &c.entrypoint,
                working_dir: non_empty(&c.working_dir),
                user: non_empty(&c.user),
                exposed_ports: &c.exposed_ports,
                os: &c.os,
                architecture: &c.architecture,
            }),
            layers: &image.layers,
            content_size_bytes: image.content_size_bytes,
            public: image.public,
        };
        match self.output.format() {
            Format::Json => render::print_json(&json)?,
            Format::Table => {
                let mut out = std::io::stdout().lock();
                let dash = |s: Option<&str>| s.unwrap_or("-").to_owned();
                writeln!(out, "id:           {}", json.id)?;
                writeln!(out, "references:   {}", json.references.join(", "))?;
                writeln!(out, "public:       {}", json.public)?;
                writeln!(out, "created:      {}", dash(json.created_at.as_deref()))?;
                writeln!(out, "updated:      {}", dash(json.updated_at.as_deref()))?;
                writeln!(out, "media type:   {}", dash(json.target.media_type))?;
                writeln!(out, "digest:       {}", dash(json.target.digest))?;
                for m in &json.manifests {
                    writeln!(out, "manifest:     {} ({})", m.digest, m.platform)?;
                }
                if let Some(c) = &json.config {
                    writeln!(out, "platform:     {}/{}", c.os, c.architecture)?;
                    writeln!(out, "entrypoint:   {}", c.entrypoint.join(" "))?;
                    writeln!(out, "cmd:          {}", c.cmd.join(" "))?;
                    writeln!(out, "env:          {}", c.env.join(" "))?;
                    writeln!(out, "working dir:  {}", dash(c.working_dir))?;
                    writeln!(out, "user:         {}", dash(c.user))?;
                    writeln!(out, "ports:        {}", c.exposed_ports.join(" "))?;
                }
                for (k, v) in &json.labels {
                    writeln!(out, "label:        {k}={v}")?;
                }
                for layer in json.layers {
                    writeln!(out, "layer:        {layer}")?;
                }
                writeln!(
                    out,
                    "size:         {} ({} bytes)",
                    human_bytes(json.content_size_bytes),
                    json.content_size_bytes
                )?;
            }
        }
        Ok(0)
    }
}

/// Removes images.
#[derive(Debug, clap::Args)]
pub struct RmArgs {
    /// References or ids.
    #[arg(required = true, value_name = "REF")]
    references: Vec<String>,
}

impl RmArgs {
    async fn run(self, ctx: &Ctx) -> Result<u8, CliError> {
        for reference in self.references {
            client(ctx)
                .remove_image(ctx.request(pb::RemoveImageRequest {
                    reference: reference.clone(),
                }))
                .await?;
            println!("{reference}");
        }
        Ok(0)
    }
}

/// Tags an image.
#[derive(Debug, clap::Args)]
pub struct TagArgs {
    /// The image: a reference or an id.
    #[arg(value_name = "SOURCE")]
    source: String,
    /// The new name, e.g. 127.0.0.1:5000/team/app:1.
    #[arg(value_name = "TARGET")]
    target: String,
}

impl TagArgs {
    async fn run(self, ctx: &Ctx) -> Result<u8, CliError> {
        let image = client(ctx)
            .tag_image(ctx.request(pb::TagImageRequest {
                source: self.source,
                target: self.target.clone(),
            }))
            .await?
            .into_inner()
            .image
            .unwrap_or_default();
        println!("{}", image.id);
        Ok(0)
    }
}

/// A registry credentials file: `{"username": "...", "password": "..."}`, mode 0600.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialsFile {
    username: String,
    password: String,
}

/// Reads registry credentials from `path`, refusing a file others may read.
pub fn read_credentials(path: &Path) -> Result<pb::RegistryCredentials, CliError> {
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| {
        CliError::Local(format!(
            "cannot read the credentials file {shown}: {e}; create it with mode 0600 holding \
             {{\"username\": \"...\", \"password\": \"...\"}}"
        ))
    })?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(CliError::Local(format!(
            "the credentials file {shown} is readable by other users; run `chmod 600 {shown}`"
        )));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::Local(format!("cannot read the credentials file {shown}: {e}")))?;
    // serde's message could quote the file's text; say only where it is wrong.
    let file: CredentialsFile = serde_json::from_str(&text).map_err(|e| {
        CliError::Usage(format!(
            "the credentials file {shown} is not valid (line {}, column {}); it must hold \
             {{\"username\": \"...\", \"password\": \"...\"}} and nothing else",
            e.line(),
            e.column()
        ))
    })?;
    if file.username.is_empty() || file.password.is_empty() {
        return Err(CliError::Usage(format!(
            "the credentials file {shown} has an empty username or password; fill in both"
        )));
    }
    Ok(pb::RegistryCredentials {
        username: file.username,
        password: file.password,
    })
}

/// Pulls or pushes an image.
#[derive(Debug, clap::Args)]
pub struct RegistryArgs {
    /// registry[:port]/repository[:tag], e.g. 127.0.0.1:5000/team/app:1.
    #[arg(value_name = "REF")]
    reference: String,
    /// The registry's credentials: a 0600 JSON file {"username": ..., "password": ...}.
    #[arg(long, value_name = "FILE")]
    credentials_file: Option<PathBuf>,
}

impl RegistryArgs {
    async fn run(self, ctx: &Ctx, push: bool) -> Result<u8, CliError> {
        let credentials = self
            .credentials_file
            .as_deref()
            .map(read_credentials)
            .transpose()?;
        let verb = if push { "pushing" } else { "pulling" };
        let mut layers = Layers::new(&format!("{verb} {}", self.reference));
        let result = if push {
            let stream = client(ctx)
                .push_image(ctx.session_request(pb::PushImageRequest {
                    reference: self.reference.clone(),
                    credentials,
                }))
                .await?
                .into_inner();
            follow(stream, &mut layers, |m| match m.event {
                Some(pb::push_image_response::Event::Progress(p)) => Some(Ok(p)),
                Some(pb::push_image_response::Event::Result(image)) => Some(Err(image)),
                None => None,
            })
            .await
        } else {
            let stream = client(ctx)
                .pull_image(ctx.session_request(pb::PullImageRequest {
                    reference: self.reference.clone(),
                    credentials,
                }))
                .await?
                .into_inner();
            follow(stream, &mut layers, |m| match m.event {
                Some(pb::pull_image_response::Event::Progress(p)) => Some(Ok(p)),
                Some(pb::pull_image_response::Event::Result(image)) => Some(Err(image)),
                None => None,
            })
            .await
        };
        layers.finish();
        let image = result?.ok_or_else(|| {
            CliError::Local(format!(
                "busd ended the {} without a result; check `bus images ls`",
                if push { "push" } else { "pull" }
            ))
        })?;
        println!("{}", image.id);
        Ok(0)
    }
}

/// Shows a pull's or push's progress on `layers` until the stream ends; the result it
/// carried, if any (the caller finishes `layers` either way). `event` tells a message's progress (`Ok`) from its result (`Err`).
async fn follow<M>(
    mut stream: tonic::Streaming<M>,
    layers: &mut Layers,
    event: impl Fn(M) -> Option<Result<pb::Progress, pb::Image>>,
) -> Result<Option<pb::Image>, CliError> {
    let mut result = None;
    loop {
        let message = match stream.message().await {
            Ok(Some(message)) => message,
            Ok(None) => return Ok(result),
            Err(status) => return Err(status.into()),
        };
        match event(message) {
            Some(Ok(p)) => layers.update(&p.id, &p.status, p.current, p.total),
            Some(Err(image)) => result = Some(image),
            None => {}
        }
    }
}

/// Loads an archive.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  \
    bus images load app.tar\n  \
    bus containers run --profile agent -i -- sh -c 'cat > /data/app.tar' < app.tar\n  \
    bus images load --from-storage app.tar\n\n\
    Guide: docs/images.md in the bus repository")]
pub struct LoadArgs {
    /// A docker-archive or OCI archive (tar), e.g. from `bus images save`.
    #[arg(value_name = "FILE", required_unless_present = "from_storage")]
    file: Option<PathBuf>,
    /// Load the archive at PATH in the account's storage instead of uploading a file: PATH is
    /// relative to the storage root (what a run of the `agent` profile sees below /data);
    /// absolute paths, `..` and symlinks are refused.
    #[arg(long, value_name = "PATH", conflicts_with = "file")]
    from_storage: Option<String>,
}

/// The chunks of `file` as request messages, after `first`, reporting to `transfer`.
pub fn file_messages<T: Send + 'static>(
    file: tokio::fs::File,
    first: T,
    data: impl Fn(Vec<u8>) -> T + Send + Sync + 'static,
    transfer: Transfer,
) -> impl futures::Stream<Item = T> + Send + 'static {
    let chunks = futures::stream::unfold(Some(file), move |file| {
        let transfer = transfer.clone();
        async move {
            let mut file = file?;
            let mut buf = vec![0u8; CHUNK];
            match file.read(&mut buf).await {
                Ok(0) | Err(_) => None,
                Ok(n) => {
                    buf.truncate(n);
                    transfer.add(n as u64);
                    Some((buf, Some(file)))
                }
            }
        }
    });
    futures::stream::once(async move { first }).chain(chunks.map(data))
}

impl LoadArgs {
    async fn run(self, ctx: &Ctx) -> Result<u8, CliError> {
        let images = match (&self.file, &self.from_storage) {
            (_, Some(path)) => from_storage(ctx, path).await?,
            (Some(file), None) => upload(ctx, file).await?,
            (None, None) => {
                return Err(CliError::Usage(
                    "name an archive FILE, or --from-storage PATH".to_owned(),
                ));
            }
        };
        for image in images {
            if image.references.is_empty() {
                println!("{}", image.id);
            }
            for reference in image.references {
                println!("{reference}");
            }
        }
        Ok(0)
    }
}

/// Loads the archive at `path` in the account's storage.
async fn from_storage(ctx: &Ctx, path: &str) -> Result<Vec<pb::Image>, CliError> {
    let first = pb::LoadImageRequest {
        part: Some(pb::load_image_request::Part::Start(pb::LoadStart {
            size_bytes: 0,
            storage_path: path.to_owned(),
        })),
    };
    // The runner copies and loads the archive: `--timeout` must not cut that off.
    let messages = futures::stream::iter([first]);
    let response = client(ctx)
        .load_image(ctx.session_request(messages))
        .await?;
    Ok(response.into_inner().images)
}

/// Uploads the archive `path` and loads it.
async fn upload(ctx: &Ctx, path: &Path) -> Result<Vec<pb::Image>, CliError> {
    let shown = path.display().to_string();
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| CliError::Local(format!("cannot read {shown}: {e}")))?;
    let size = file
        .metadata()
        .await
        .map_err(|e| CliError::Local(format!("cannot read {shown}: {e}")))?
        .len();
    let transfer = Transfer::new(&format!("uploading {shown}"), Some(size));
    let first = pb::LoadImageRequest {
        part: Some(pb::load_image_request::Part::Start(pb::LoadStart {
            size_bytes: size,
            storage_path: String::new(),
        })),
    };
    let messages = file_messages(
        file,
        first,
        |data| pb::LoadImageRequest {
            part: Some(pb::load_image_request::Part::Data(data)),
        },
        transfer.clone(),
    );
    // An upload lasts as long as the file takes: `--timeout` must not cut it off.
    let result = client(ctx).load_image(ctx.session_request(messages)).await;
    match result {
        Ok(response) => {
            transfer.finish();
            Ok(response.into_inner().images)
        }
        Err(status) => {
            transfer.abandon();
            Err(status.into())
        }
    }
}

/// Saves an image.
#[derive(Debug, clap::Args)]
pub struct SaveArgs {
    /// A reference or an image id.
    #[arg(value_name = "REF")]
    reference: String,
    /// Where to write the archive (`-` for stdout); written whole or not at all.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    output: PathBuf,
    /// `docker`: a docker-archive (`docker load`, `podman load`); `oci`: an OCI image layout
    /// in a tar (`oci-layout`, `index.json`, `blobs/`), e.g. for skopeo `oci-archive:`. `bus
    /// images load` takes both.
    #[arg(long, value_enum, default_value_t = ArchiveFormat::Docker)]
    format: ArchiveFormat,
}

/// The kinds of archive `bus images save` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ArchiveFormat {
    /// A docker-archive.
    Docker,
    /// An OCI image layout in a tar.
    Oci,
}

impl From<ArchiveFormat> for pb::ArchiveFormat {
    fn from(format: ArchiveFormat) -> Self {
        match format {
            ArchiveFormat::Docker => pb::ArchiveFormat::Docker,
            ArchiveFormat::Oci => pb::ArchiveFormat::Oci,
        }
    }
}

impl SaveArgs {
    async fn run(self, ctx: &Ctx) -> Result<u8, CliError> {
        let to_stdout = self.output.as_os_str() == "-";
        if to_stdout && std::io::stdout().is_terminal() {
            return Err(CliError::Usage(
                "refusing to write an archive to a terminal; name a file with -o FILE or redirect stdout"
                    .to_owned(),
            ));
        }
        let mut stream = client(ctx)
            .save_image(ctx.session_request(pb::SaveImageRequest {
                reference: self.reference.clone(),
                format: pb::ArchiveFormat::from(self.format).into(),
            }))
            .await?
            .into_inner();
        let shown = self.output.display().to_string();
        let partial = partial_path(&self.output);
        let mut out: Box<dyn std::io::Write> = if to_stdout {
            Box::new(std::io::stdout().lock())
        } else {
            Box::new(std::io::BufWriter::new(
                std::fs::File::create(&partial).map_err(|e| {
                    CliError::Local(format!("cannot write {}: {e}", partial.display()))
                })?,
            ))
        };
        let transfer = Transfer::new(&format!("saving {}", self.reference), None);
        let written = async {
            while let Some(message) = stream.message().await? {
                out.write_all(&message.data)?;
                transfer.add(message.data.len() as u64);
            }
            out.flush()?;
            Ok::<(), CliError>(())
        }
        .await;
        drop(out);
        match written {
            Ok(()) => {
                transfer.finish();
                if !to_stdout {
                    std::fs::rename(&partial, &self.output)
                        .map_err(|e| CliError::Local(format!("cannot write {shown}: {e}")))?;
                }
                Ok(0)
            }
            Err(e) => {
                transfer.abandon();
                if !to_stdout {
                    let _ = std::fs::remove_file(&partial);
                }
                Err(e)
            }
        }
    }
}

/// `FILE.partial` beside `FILE`.
fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_read_for_people() {
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(2_131_368), "2.1 MB");
    }

    #[test]
    fn credentials_files_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("creds.json");
        std::fs::write(&path, r#"{"username":"u","password":"p4ss"}"#).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = read_credentials(&path).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = read_credentials(&path).unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("u", "p4ss"));
        std::fs::write(&path, r#"{"username":"u","password":"s3cr3t","x":1}"#).unwrap();
        let err = read_credentials(&path).unwrap_err().to_string();
        assert!(!err.contains("s3cr3t"), "{err}");
        assert!(err.contains("not valid"), "{err}");
    }
}
