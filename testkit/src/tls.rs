//! A private certificate authority and a server certificate it issued, as a remote deployment
//! would have, made with the openssl CLI.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::Error;

/// Writes into `dir` a CA (`ca.pem`, `ca.key`) and a server certificate for 127.0.0.1 and
/// localhost it issued (`server.pem`, `server.key`), all ECDSA P-256, valid for two days.
pub fn certificates(dir: &Path) -> Result<(), Error> {
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .map_err(|e| Error::Io(format!("cannot write into {}", dir.display()), e))?;
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let days = ["-days", "2"];
    let ca = [
        &["req", "-x509"][..],
        &ec,
        &days,
        &[
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-subj",
            "/CN=bus test CA",
        ],
        &["-addext", "basicConstraints=critical,CA:TRUE"],
        &["-addext", "keyUsage=critical,keyCertSign,cRLSign"],
    ]
    .concat();
    let request = [
        &["req"][..],
        &ec,
        &[
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    ]
    .concat();
    let sign = [
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
        ][..],
        &[
            "-set_serial",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "server.pem",
        ],
        &days,
    ]
    .concat();
    for args in [ca, request, sign] {
        let out = Command::new("openssl")
            .current_dir(dir)
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| Error::Spawn {
                program: "openssl".into(),
                hint: "; scripts/setup-engine installs it",
                source,
            })?;
        if !out.status.success() {
            return Err(Error::NotReady(format!(
                "openssl {} failed: {}",
                args[0],
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
    }
    Ok(())
}
