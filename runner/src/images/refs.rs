//! Image references: parsed, validated and written one canonical way, so that ownership
//! records, grants and the engine agree on what a name means.
//!
//! Canonical form: `domain/path[:tag][@digest]` with a domain always present (a name without
//! one is local: `localhost/`, as Podman names built and loaded images) and `:latest` when
//! neither tag nor digest is given. A bare hex string of 12 to 64 digits, or `sha256:` and
//! such a string, names an image by id.

/// What a reference names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRef {
    /// A name, canonical.
    Name(Name),
    /// An image id or a prefix of one: lowercase hex, without `sha256:`.
    Id(String),
}

/// A canonical image name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name {
    full: String,
    domain_len: usize,
    /// Where the tag's `:` is, if there is a tag.
    tag_at: Option<usize>,
    /// Where the digest's `@` is, if there is a digest.
    digest_at: Option<usize>,
}

/// Longest reference accepted, in bytes.
pub const MAX_REFERENCE_BYTES: usize = 512;

impl Name {
    /// The canonical text.
    pub fn as_str(&self) -> &str {
        &self.full
    }

    /// The registry part: `localhost`, `127.0.0.1:5000`, `docker.io`.
    pub fn domain(&self) -> &str {
        &self.full[..self.domain_len]
    }

    /// Whether the name lives only in the engine's store (`localhost/...`), not in a registry.
    pub fn is_local(&self) -> bool {
        self.domain() == "localhost"
    }

    /// `domain/path`, without tag or digest.
    pub fn repository(&self) -> &str {
        let end = self.tag_at.or(self.digest_at).unwrap_or(self.full.len());
        &self.full[..end]
    }

    /// The tag, if any.
    pub fn tag(&self) -> Option<&str> {
        let at = self.tag_at?;
        let end = self.digest_at.unwrap_or(self.full.len());
        Some(&self.full[at + 1..end])
    }

    /// The digest (`sha256:...`), if any.
    pub fn digest(&self) -> Option<&str> {
        self.digest_at.map(|at| &self.full[at + 1..])
    }
}

impl std::fmt::Display for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.full)
    }
}

const EXAMPLE: &str = "e.g. localhost/app:1 or 127.0.0.1:5000/team/app:1";

/// Parses a reference as a person or a request writes it.
pub fn parse(text: &str) -> Result<ImageRef, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err(format!("name an image reference, {EXAMPLE}"));
    }
    if text.len() > MAX_REFERENCE_BYTES {
        return Err(format!(
            "the image reference is longer than {MAX_REFERENCE_BYTES} bytes"
        ));
    }
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "the image reference \"{}\" contains spaces or control characters",
            text.escape_debug()
        ));
    }
    if let Some(hex) = text.strip_prefix("sha256:") {
        if is_hex(hex) && (1..=64).contains(&hex.len()) {
            return Ok(ImageRef::Id(hex.to_ascii_lowercase()));
        }
        return Err(format!(
            "\"{text}\" is not an image id: write sha256: and up to 64 hex digits"
        ));
    }
    if is_hex(text) && (12..=64).contains(&text.len()) && text == text.to_ascii_lowercase() {
        return Ok(ImageRef::Id(text.to_owned()));
    }
    parse_name(text).map(ImageRef::Name)
}

/// Parses a name (not an id); see the module docs for the canonical form.
pub fn parse_name(text: &str) -> Result<Name, String> {
    let bad = |why: &str| format!("\"{text}\" is not a valid image reference: {why} ({EXAMPLE})");
    let (name, digest) = match text.split_once('@') {
        Some((name, digest)) => {
            let hex = digest
                .strip_prefix("sha256:")
                .ok_or_else(|| bad("a digest must be sha256:<64 hex digits>"))?;
            if hex.len() != 64 || !is_hex(hex) {
                return Err(bad("a digest must be sha256:<64 hex digits>"));
            }
            (name, Some(digest.to_ascii_lowercase()))
        }
        None => (text, None),
    };
    let last_slash = name.rfind('/');
    let (path, tag) = match name.rfind(':') {
        Some(colon) if last_slash.is_none_or(|slash| colon > slash) => {
            (&name[..colon], Some(&name[colon + 1..]))
        }
        _ => (name, None),
    };
    if let Some(tag) = tag {
        let ok = !tag.is_empty()
            && tag.len() <= 128
            && tag
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
            && !tag.starts_with(['.', '-']);
        if !ok {
            return Err(bad(
                "a tag is 1 to 128 letters, digits, `_`, `.` or `-`, not starting with `.` or `-`",
            ));
        }
    }
    let mut parts: Vec<&str> = path.split('/').collect();
    let domain = if parts.len() > 1 && (parts[0].contains(['.', ':']) || parts[0] == "localhost") {
        let domain = parts.remove(0);
        let (host, port) = match domain.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (domain, None),
        };
        let host_ok = !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'));
        let port_ok = port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && is_digits(p));
        if !host_ok || !port_ok {
            return Err(bad(
                "the registry must be a host name with an optional :port",
            ));
        }
        domain.to_ascii_lowercase()
    } else {
        "localhost".to_owned()
    };
    if parts.is_empty() || parts.iter().any(|p| p.is_empty()) {
        return Err(bad("the repository path is empty"));
    }
    for part in &parts {
        if part.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(bad("repository names must be lowercase"));
        }
        let ok = part
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
            && part.starts_with(|c: char| c.is_ascii_alphanumeric())
            && part.ends_with(|c: char| c.is_ascii_alphanumeric());
        if !ok {
            return Err(bad(
                "path components are lowercase letters and digits, separated by `.`, `_` or `-`",
            ));
        }
    }
    let mut full = format!("{domain}/{}", parts.join("/"));
    let domain_len = domain.len();
    let mut tag_at = None;
    match (tag, &digest) {
        (Some(tag), _) => {
            tag_at = Some(full.len());
            full.push(':');
            full.push_str(tag);
        }
        (None, None) => {
            tag_at = Some(full.len());
            full.push_str(":latest");
        }
        (None, Some(_)) => {}
    }
    let mut digest_at = None;
    if let Some(digest) = digest {
        digest_at = Some(full.len());
        full.push('@');
        full.push_str(&digest);
    }
    Ok(Name {
        full,
        domain_len,
        tag_at,
        digest_at,
    })
}

fn is_hex(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_hexdigit())
}

fn is_digits(s: &str) -> bool {
    s.chars().all(|c| c.is_ascii_digit())
}

/// The engine's id without `sha256:`.
pub fn bare_id(id: &str) -> &str {
    id.strip_prefix("sha256:").unwrap_or(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(text: &str) -> String {
        match parse(text).unwrap() {
            ImageRef::Name(n) => n.as_str().to_owned(),
            ImageRef::Id(id) => panic!("{text} parsed as id {id}"),
        }
    }

    #[test]
    fn names_become_canonical() {
        let digest = format!("sha256:{}", "a".repeat(64));
        let cases = [
            ("app", "localhost/app:latest"),
            ("app:1", "localhost/app:1"),
            ("team/app", "localhost/team/app:latest"),
            ("localhost/busybox", "localhost/busybox:latest"),
            ("127.0.0.1:5000/x/y:2", "127.0.0.1:5000/x/y:2"),
            ("Registry.Example.com/a", "registry.example.com/a:latest"),
            ("localhost:5000/app", "localhost:5000/app:latest"),
        ];
        for (text, want) in cases {
            assert_eq!(name(text), want, "{text}");
        }
        assert_eq!(
            name(&format!("r.io/a@{digest}")),
            format!("r.io/a@{digest}")
        );
        assert_eq!(
            name(&format!("r.io/a:1@{digest}")),
            format!("r.io/a:1@{digest}")
        );
    }

    #[test]
    fn parts_are_found() {
        let ImageRef::Name(n) = parse("127.0.0.1:5000/team/app:1").unwrap() else {
            panic!()
        };
        assert_eq!(n.domain(), "127.0.0.1:5000");
        assert_eq!(n.repository(), "127.0.0.1:5000/team/app");
        assert_eq!(n.tag(), Some("1"));
        assert_eq!(n.digest(), None);
        assert!(!n.is_local());
        let ImageRef::Name(n) = parse("app").unwrap() else {
            panic!()
        };
        assert!(n.is_local());
        assert_eq!(n.tag(), Some("latest"));
    }

    #[test]
    fn ids_are_ids() {
        assert_eq!(
            parse("sha256:ABCdef").unwrap(),
            ImageRef::Id("abcdef".into())
        );
        assert_eq!(
            parse("8529f0bf3367").unwrap(),
            ImageRef::Id("8529f0bf3367".into())
        );
        // Too short to be an id: a name.
        assert_eq!(name("abc123"), "localhost/abc123:latest");
    }

    #[test]
    fn bad_references_say_why() {
        for (text, why) in [
            ("", "name an image reference"),
            ("a b", "spaces"),
            ("App", "lowercase"),
            ("x/", "empty"),
            ("x:", "a tag is"),
            ("x@sha256:12", "digest"),
            ("-x", "path components"),
            ("sha256:xyz", "not an image id"),
            ("bad host!/x", "spaces"),
            ("ho$t.io/x", "registry"),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.contains(why), "{text}: {err}");
        }
        assert!(parse(&"a".repeat(600)).unwrap_err().contains("longer"));
    }
}
