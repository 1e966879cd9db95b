//! TLS termination: rustls (aws-lc-rs), TLS 1.2 and 1.3, ALPN `h2` + `http/1.1`, optional
//! client certificates (mTLS), and certificate reload without a restart.
//!
//! The certificate is served through a resolver that holds an `ArcSwap<CertifiedKey>`: a
//! background task polls the files' modification times and swaps in the new pair once it
//! loads and the key matches the certificate. A half-written or mismatched pair keeps the old
//! one (logged), so a renewal in progress never takes the listener down. Connections already
//! established keep the certificate they were handshaken with.
//!
//! The crypto provider is passed explicitly everywhere instead of relying on the process
//! default, so a test binary or an embedder cannot end up without one.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, ServerConfig, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConnection};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{ClientAuth, TlsSettings};

/// Why TLS material could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read certificates from `{path}`: {source}")]
    ReadCerts {
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("no certificate found in `{0}`")]
    NoCerts(PathBuf),
    #[error("cannot read a private key from `{path}`: {source}")]
    ReadKey {
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("the key `{key}` does not fit the certificate `{cert}`: {source}")]
    BadKey {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("invalid CA certificate in `{path}`: {source}")]
    BadCa {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("cannot verify client certificates against `{path}`: {source}")]
    Verifier {
        path: PathBuf,
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
    #[error("cannot load the system's root certificates: {0}")]
    NativeRoots(#[source] std::io::Error),
    #[error("TLS setup failed: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The one provider the gateway uses (DESIGN: aws-lc-rs, never ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Every certificate in a PEM file (leaf first, as written).
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::ReadCerts {
            path: path.to_path_buf(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCerts(path.to_path_buf()));
    }
    Ok(certs)
}

/// A CA bundle as a root store (mTLS client CAs, upstream `ca`).
pub fn read_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path)? {
        roots.add(cert).map_err(|source| TlsError::BadCa {
            path: path.to_path_buf(),
            source,
        })?;
    }
    Ok(roots)
}

fn load_pair(settings: &TlsSettings) -> Result<Arc<CertifiedKey>, TlsError> {
    let certs = read_certs(&settings.cert)?;
    let key = PrivateKeyDer::from_pem_file(&settings.key).map_err(|source| TlsError::ReadKey {
        path: settings.key.clone(),
        source,
    })?;
    CertifiedKey::from_der(certs, key, &provider())
        .map(Arc::new)
        .map_err(|source| TlsError::BadKey {
            cert: settings.cert.clone(),
            key: settings.key.clone(),
            source,
        })
}

/// Serves the pair `build` loaded (checked to match, so a renewal caught between writing the
/// key and the cert fails to build instead of serving a broken pair).
#[derive(Debug)]
struct LoadedCert(Arc<CertifiedKey>);

impl ResolvesServerCert for LoadedCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// Build the listener's rustls config; also what `portcullis check` runs.
pub fn server_config(settings: &TlsSettings) -> Result<ServerConfig, TlsError> {
    build(settings)
}

fn build(settings: &TlsSettings) -> Result<ServerConfig, TlsError> {
    let provider = provider();
    let resolver = Arc::new(LoadedCert(load_pair(settings)?));
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = match &settings.client_auth {
        None => builder.with_no_client_auth(),
        Some((ca, mode)) => {
            let roots = Arc::new(read_roots(ca)?);
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider);
            let verifier = match mode {
                ClientAuth::Required => verifier,
                ClientAuth::Optional => verifier.allow_unauthenticated(),
            };
            let verifier = verifier.build().map_err(|source| TlsError::Verifier {
                path: ca.clone(),
                source,
            })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The listener's TLS side: the config new handshakes use, and what reloads it.
pub struct Terminator {
    config: ArcSwap<ServerConfig>,
    settings: TlsSettings,
}

/// Modification times of the files the config is built from (cert, key, client CA).
type Stamps = [Option<SystemTime>; 3];

impl Terminator {
    pub fn build(settings: &TlsSettings) -> Result<Terminator, TlsError> {
        Ok(Terminator {
            config: ArcSwap::from_pointee(build(settings)?),
            settings: settings.clone(),
        })
    }

    /// The acceptor for a new connection: the config loaded last.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config.load_full())
    }

    fn stamps(&self) -> Stamps {
        let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        [
            mtime(&self.settings.cert),
            mtime(&self.settings.key),
            self.settings
                .client_auth
                .as_ref()
                .and_then(|(ca, _)| mtime(ca)),
        ]
    }

    /// Poll the cert, key and client CA files every `watch_interval`; when one changed,
    /// rebuild the whole config and swap it in if it builds (a rotated client CA takes effect
    /// like a renewed certificate). Open connections keep the config they were accepted with.
    /// Runs until the returned handle is aborted (the listener does so when it stops).
    pub fn spawn_watch(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut seen = this.stamps();
            let mut tick = tokio::time::interval(this.settings.watch_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let now = this.stamps();
                // A file missing (mid-replacement): try again next tick.
                let missing = now[..2].contains(&None)
                    || (this.settings.client_auth.is_some() && now[2].is_none());
                if missing || now == seen {
                    continue;
                }
                match build(&this.settings) {
                    Ok(config) => {
                        this.config.store(Arc::new(config));
                        seen = now;
                        tracing::info!(cert = %this.settings.cert.display(), "TLS certificate and client CA reloaded.");
                    }
                    // Often a renewal caught between writing the cert and the key: retry next
                    // tick without remembering these stamps.
                    Err(err) => {
                        tracing::warn!(error = %err, "TLS reload failed; keeping the old certificate and client CA.");
                    }
                }
            }
        })
    }
}

/// The verified client certificate's subject, RFC 4514 style (`CN=alice,O=Example`).
pub fn client_subject(session: &ServerConnection) -> Option<Arc<str>> {
    let leaf = session.peer_certificates()?.first()?;
    subject_of(leaf.as_ref()).map(Arc::from)
}

// === minimal DER reading for the subject ===

/// One DER TLV: (tag, content, rest). `None` on anything malformed or longer than 16 MiB.
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 3 {
            return None;
        }
        let (bytes, after) = rest.split_at_checked(n)?;
        rest = after;
        bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b))
    };
    let (content, rest) = rest.split_at_checked(len)?;
    Some((tag, content, rest))
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;

/// Certificate → tbsCertificate → (skip version, serial, signature, issuer, validity) → subject.
fn subject_of(der: &[u8]) -> Option<String> {
    let (SEQUENCE, cert, _) = tlv(der)? else {
        return None;
    };
    let (SEQUENCE, tbs, _) = tlv(cert)? else {
        return None;
    };
    let mut rest = tbs;
    let (tag, _, after) = tlv(rest)?;
    if tag == 0xa0 {
        rest = after; // [0] EXPLICIT version
    }
    for _ in 0..4 {
        let (_, _, after) = tlv(rest)?; // serial, signature, issuer, validity
        rest = after;
    }
    let (SEQUENCE, name, _) = tlv(rest)? else {
        return None;
    };
    render_name(name)
}

fn render_name(mut name: &[u8]) -> Option<String> {
    let mut rdns = Vec::new();
    while !name.is_empty() {
        let (SET, mut set, after) = tlv(name)? else {
            return None;
        };
        name = after;
        let mut parts = Vec::new();
        while !set.is_empty() {
            let (SEQUENCE, atv, after) = tlv(set)? else {
                return None;
            };
            set = after;
            let (0x06, oid, value) = tlv(atv)? else {
                return None;
            };
            let (vtag, value, _) = tlv(value)?;
            let key = match oid {
                [0x55, 0x04, 0x03] => "CN".to_owned(),
                [0x55, 0x04, 0x06] => "C".to_owned(),
                [0x55, 0x04, 0x07] => "L".to_owned(),
                [0x55, 0x04, 0x08] => "ST".to_owned(),
                [0x55, 0x04, 0x0a] => "O".to_owned(),
                [0x55, 0x04, 0x0b] => "OU".to_owned(),
                [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x19] => "DC".to_owned(),
                [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x01] => "UID".to_owned(),
                other => dotted_oid(other)?,
            };
            let text = match vtag {
                // UTF8String, PrintableString, IA5String, TeletexString (read as UTF-8)
                12 | 19 | 22 | 20 => Some(String::from_utf8_lossy(value).into_owned()),
                _ => None,
            };
            parts.push(match text {
                Some(t) => format!("{key}={}", escape_value(&t)),
                None => format!("{key}=#{}", hex::encode(value)),
            });
        }
        rdns.push(parts.join("+"));
    }
    // RFC 4514 writes the most specific RDN first.
    rdns.reverse();
    Some(rdns.join(","))
}

fn dotted_oid(oid: &[u8]) -> Option<String> {
    let (&first, rest) = oid.split_first()?;
    let mut out = format!("{}.{}", first / 40, first % 40);
    let mut acc: u64 = 0;
    for &b in rest {
        acc = acc.checked_mul(128)? | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            out.push_str(&format!(".{acc}"));
            acc = 0;
        }
    }
    Some(out)
}

fn escape_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for (i, c) in v.chars().enumerate() {
        let leading = i == 0 && (c == ' ' || c == '#');
        let trailing = i + 1 == v.chars().count() && c == ' ';
        if matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=') || leading || trailing {
            out.push('\\');
        }
        if c.is_control() {
            out.push_str(&format!("\\{:02x}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_is_rendered_most_specific_first() {
        let mut params = rcgen::CertificateParams::new(vec!["client.test".to_owned()]).unwrap();
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::OrganizationName, "Example, Inc");
        dn.push(rcgen::DnType::CommonName, "alice");
        params.distinguished_name = dn;
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(
            subject_of(cert.der()).as_deref(),
            Some("CN=alice,O=Example\\, Inc")
        );
    }

    #[test]
    fn malformed_der_is_none() {
        assert_eq!(subject_of(&[]), None);
        assert_eq!(subject_of(&[0x30, 0x82, 0xff]), None);
        assert_eq!(subject_of(&[0x30, 0x03, 0x30, 0x01, 0x02]), None);
    }
}
