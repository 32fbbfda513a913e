//! TLS to Redis (`rediss://`), built with the `redis-tls` feature: rustls on ring.
//!
//! The server's certificate is checked against the system's roots (the redis crate loads them
//! with rustls-native-certs), where the public CAs of managed Redis services are; or, with
//! `redis_tls_ca_file`, against that file's CAs only, for a Redis whose certificate a private CA
//! signed. The settings are part of the [`redis::Client`], and both of the store's connections
//! (the commands' `ConnectionManager` and the wake-ups' pub/sub) are made from that one client,
//! so neither can go plain. No client certificate is offered (mutual TLS is not supported), and
//! certificate checks cannot be turned off: the redis crate's `tls-rustls-insecure` is never
//! enabled, and `Config::validate` refuses `#insecure`.

use std::path::Path;

use redis::{ConnectionInfo, TlsCertificates};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

/// The client for a `rediss://` address (`connection_info`, from the setting `key`), trusting
/// `ca_file`'s certificates instead of the system's when given. A CA file that cannot be read,
/// or holds no certificate, is refused here, at start, rather than making every connection fail.
pub fn client(
    connection_info: ConnectionInfo,
    ca_file: Option<&Path>,
    key: &str,
) -> Result<redis::Client, String> {
    // The redis crate builds each connection's rustls config on the process's default provider.
    // rustls would pick ring by itself, being the only provider compiled; installing it keeps
    // that so should a dependency ever bring aws-lc-rs too (with two, rustls would panic).
    // `Err` only says that a provider is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let Some(path) = ca_file else {
        return redis::Client::open(connection_info)
            .map_err(|error| format!("signpost.{key} is not usable: {error}"));
    };
    let certificates = certificates(path)?;
    redis::Client::build_with_tls(connection_info, certificates).map_err(|error| {
        format!(
            "signpost.redis_tls_ca_file ({}) is not usable: {error}",
            path.display()
        )
    })
}

/// `ca_file`'s certificates, as the redis crate takes them (also for a Redis Cluster's client,
/// which has a builder of its own). A file that cannot be read, or holds no certificate, is
/// refused here, at start.
pub fn certificates(path: &Path) -> Result<TlsCertificates, String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let refused = |why: String| format!("signpost.redis_tls_ca_file ({}) {why}", path.display());
    let pem = std::fs::read(path).map_err(|error| refused(format!("cannot be read: {error}")))?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .try_fold(0_usize, |count, certificate| certificate.map(|_| count + 1))
        .map_err(|error| refused(format!("is not a PEM file: {error}")))?;
    // The redis crate would take a file without certificates as an empty list of CAs, which no
    // server's certificate chains to.
    if certificates == 0 {
        return Err(refused(
            "holds no certificate (a PEM file of -----BEGIN CERTIFICATE----- blocks)".into(),
        ));
    }
    Ok(TlsCertificates {
        client_tls: None,
        root_cert: Some(pem),
    })
}
