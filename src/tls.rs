//! TLS, with pingora's rustls: the listener's certificate (served from the snapshot, so a
//! renewed certificate is picked up by hot reload) and TLS to the upstream.
//!
//! Why rustls rather than OpenSSL: no system library to install or keep patched in the
//! image, memory-safe parsing of what the network sends, and the same `ring` that already
//! verifies our tokens.
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use pingora::tls::sign::CertifiedKey;
use pingora::tls::{CertificateDer, ClientHello, PrivateKeyDer, ResolvesServerCert, RootCertStore};
use pingora::utils::tls::{parse_x509, WrappedX509};

use crate::config::Shared;

/// The listener's certificate chain and key, loaded at config load.
#[derive(Clone)]
pub struct ListenerTls {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub certified: Arc<CertifiedKey>,
}

impl fmt::Debug for ListenerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ListenerTls").field("cert_path", &self.cert_path).finish()
    }
}

impl PartialEq for ListenerTls {
    fn eq(&self, other: &Self) -> bool {
        self.cert_path == other.cert_path
            && self.key_path == other.key_path
            && self.certified.cert == other.certified.cert
    }
}
impl Eq for ListenerTls {}

/// TLS to the upstream.
#[derive(Clone)]
pub struct UpstreamTls {
    /// Server name sent (SNI) and verified.
    pub sni: String,
    /// Verify the upstream's certificate (default true).
    pub verify: bool,
    /// Trust these CAs instead of the system's.
    pub ca: Option<Arc<pingora::protocols::tls::CaType>>,
    pub ca_path: Option<PathBuf>,
}

impl fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("sni", &self.sni)
            .field("verify", &self.verify)
            .field("ca_path", &self.ca_path)
            .finish()
    }
}

impl PartialEq for UpstreamTls {
    fn eq(&self, other: &Self) -> bool {
        self.sni == other.sni && self.verify == other.verify && self.ca_path == other.ca_path
    }
}
impl Eq for UpstreamTls {}

/// Every PEM block with this label, decoded.
fn pem_blocks(text: &str, label: &str) -> Result<Vec<Vec<u8>>, String> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(&begin) {
        let body = &rest[i + begin.len()..];
        let j = body.find(&end).ok_or_else(|| format!("a {label} block has no END line"))?;
        let b64: String = body[..j].chars().filter(|c| !c.is_whitespace()).collect();
        out.push(STANDARD.decode(b64).map_err(|e| format!("a {label} block is not valid base64: {e}"))?);
        rest = &body[j + end.len()..];
    }
    Ok(out)
}

/// Certificates from PEM text, each checked to parse.
fn load_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = pem_blocks(pem, "CERTIFICATE")?;
    if certs.is_empty() {
        return Err("no CERTIFICATE block found".into());
    }
    Ok(certs.into_iter().map(CertificateDer::from).collect())
}

/// Builds the listener's certificate chain and private key (PKCS#8, SEC1 or PKCS#1 PEM)
/// from the two files' text (read once by the config loader). Errors name which of the
/// two files is at fault.
pub fn load_listener(cert: &Path, cert_pem: &str, key: &Path, key_pem: &str) -> Result<ListenerTls, (PathBuf, String)> {
    pingora::tls::install_default_crypto_provider();
    let chain = load_certs(cert_pem).map_err(|e| (cert.to_path_buf(), e))?;
    let der = ["PRIVATE KEY", "EC PRIVATE KEY", "RSA PRIVATE KEY"]
        .iter()
        .find_map(|l| pem_blocks(key_pem, l).ok().and_then(|mut v| v.pop()))
        .ok_or_else(|| (key.to_path_buf(), "no private key block found".to_string()))?;
    let key_der = PrivateKeyDer::try_from(der).map_err(|e| (key.to_path_buf(), format!("bad private key: {e}")))?;
    let provider = pingora::tls::CryptoProvider::get_default()
        .ok_or_else(|| (key.to_path_buf(), "no TLS crypto provider".to_string()))?;
    let certified = CertifiedKey::from_der(chain, key_der, provider)
        .map_err(|e| (key.to_path_buf(), format!("the key does not fit the certificate: {e}")))?;
    Ok(ListenerTls {
        cert_path: cert.to_path_buf(),
        key_path: key.to_path_buf(),
        certified: Arc::new(certified),
    })
}

/// CA certificates to trust for the upstream, from PEM text.
pub fn load_ca(pem: &str) -> Result<Arc<pingora::protocols::tls::CaType>, String> {
    let certs = load_certs(pem)?;
    let mut store = RootCertStore::empty();
    let mut wrapped = Vec::new();
    for c in certs {
        // webpki checks the DER first: pingora's own parser would panic on a bad one.
        store.add(c.clone()).map_err(|e| format!("not a usable CA certificate: {e}"))?;
        wrapped.push(WrappedX509::new(c.as_ref().to_vec(), parse_x509));
    }
    Ok(Arc::from(wrapped.into_boxed_slice()))
}

/// Serves the certificate of the current snapshot, so a reload swaps it for new handshakes.
#[derive(Debug)]
pub struct SnapshotCertResolver {
    pub config: Shared,
}

impl ResolvesServerCert for SnapshotCertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.config.load().settings.tls.as_ref().map(|t| t.certified.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_blocks_finds_each_block() {
        let text = "junk\n-----BEGIN CERTIFICATE-----\nAAEC\n-----END CERTIFICATE-----\n-----BEGIN CERTIFICATE-----\nAwQ=\n-----END CERTIFICATE-----\n";
        assert_eq!(pem_blocks(text, "CERTIFICATE").unwrap(), vec![vec![0, 1, 2], vec![3, 4]]);
        assert!(pem_blocks("-----BEGIN CERTIFICATE-----\nAAEC\n", "CERTIFICATE").is_err());
        assert!(pem_blocks("", "CERTIFICATE").unwrap().is_empty());
    }
}
