//! Extra CA certificates for `https://` origins.

use std::sync::Arc;

/// CA certificates trusted for `https://` origins besides the built-in web roots: busd's
/// `--ca-file` (`BUS_CA_FILE`), for a runner whose certificate a private CA issued.
#[derive(Clone, Default)]
pub struct TrustedCas {
    /// For the REST client.
    pub(super) http: Vec<reqwest::Certificate>,
    /// For the exec WebSocket: the web roots plus these; `None` without any.
    pub(super) websocket: Option<Arc<rustls::ClientConfig>>,
    count: usize,
}

impl std::fmt::Debug for TrustedCas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TrustedCas({} certificates)", self.count)
    }
}

/// Why a CA file cannot be used.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot use the CA file {}: {reason}; point --ca-file (or BUS_CA_FILE) at a PEM file of the CA certificates that issued the runner's certificate",
    .path.display()
)]
pub struct CaFileError {
    path: std::path::PathBuf,
    reason: String,
}

impl TrustedCas {
    /// Reads every certificate in the PEM file at `path`.
    pub fn load(path: &std::path::Path) -> Result<TrustedCas, CaFileError> {
        use rustls_pki_types::CertificateDer;
        use rustls_pki_types::pem::PemObject as _;
        let fail = |reason: String| CaFileError {
            path: path.to_owned(),
            reason,
        };
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| fail(e.to_string()))?;
        if certs.is_empty() {
            return Err(fail("it holds no CERTIFICATE block".to_owned()));
        }
        let mut roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let mut http = Vec::with_capacity(certs.len());
        for cert in &certs {
            roots
                .add(cert.clone())
                .map_err(|e| fail(format!("a certificate in it is not usable: {e}")))?;
            http.push(
                reqwest::Certificate::from_der(cert)
                    .map_err(|e| fail(format!("a certificate in it is not usable: {e}")))?,
            );
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let websocket = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| fail(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(TrustedCas {
            http,
            websocket: Some(Arc::new(websocket)),
            count: certs.len(),
        })
    }

    /// How many certificates are trusted beside the web roots.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}
