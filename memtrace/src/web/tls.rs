//! The rustls server configuration of a web config file's `tls_server_config`: the
//! certificate chain and key (PEM files or inline PEM), the client certificate policy of
//! `client_auth_type`, the TLS versions, cipher suites and curves, and ALPN `http/1.1` only
//! (memtrace serves HTTP/1.1, so a client offering h2 settles on HTTP/1.1).
//!
//! Every file is read here, at each (re)load, never per connection: a reload is what picks
//! up a renewed certificate (see [`reload`](super::reload)).

use std::{fmt, sync::Arc};

use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
    client::danger::HandshakeSignatureValid,
    crypto::{CryptoProvider, WebPkiSupportedAlgorithms},
    pki_types::{CertificateDer, PrivateKeyDer, UnixTime, pem::PemObject},
    server::{
        WebPkiClientVerifier,
        danger::{ClientCertVerified, ClientCertVerifier},
    },
};

use super::config::{ClientAuth, Pem, TlsSettings, TlsVersion};

/// Reads `pem` (a file, or the config file's inline text): the bytes and how to name it.
fn read(pem: &Pem, key: &str) -> Result<(Vec<u8>, String), String> {
    match pem {
        Pem::Inline(text) => Ok((text.as_bytes().to_vec(), format!("tls_server_config.{key}"))),
        Pem::File(path) => {
            let name = format!("{key}_file {}", path.display());
            let bytes = super::read_bounded(path).map_err(|e| match e.kind() {
                std::io::ErrorKind::FileTooLarge => {
                    format!("cannot read {name}: {e}, not a PEM file")
                }
                _ => format!("cannot read {name}: {e}"),
            })?;
            Ok((bytes, name))
        }
    }
}

fn certificates(pem: &Pem, key: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let (bytes, name) = read(pem, key)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{name} is not valid PEM: {e}"))?;
    if certs.is_empty() {
        return Err(format!(
            "{name} holds no certificate (a PEM \"BEGIN CERTIFICATE\" block); check the file"
        ));
    }
    Ok(certs)
}

fn private_key(pem: &Pem) -> Result<PrivateKeyDer<'static>, String> {
    let (bytes, name) = read(pem, "key")?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => format!(
            "{name} holds no private key (a PEM \"BEGIN PRIVATE KEY\", \"BEGIN RSA PRIVATE KEY\" or \
             \"BEGIN EC PRIVATE KEY\" block); check the file"
        ),
        e => format!("{name} is not valid PEM: {e}"),
    })
}

/// The server configuration `s` describes, reading its files now.
pub fn server_config(s: &TlsSettings) -> Result<ServerConfig, String> {
    let certs = certificates(&s.cert, "cert")?;
    let key = private_key(&s.key)?;

    let mut provider = rustls::crypto::ring::default_provider();
    if !s.cipher_suites.is_empty() {
        let tls13 = provider
            .cipher_suites
            .iter()
            .copied()
            .filter(|c| c.tls13().is_some());
        provider.cipher_suites = tls13.chain(s.cipher_suites.iter().copied()).collect();
    }
    if !s.curves.is_empty() {
        provider.kx_groups = s.curves.clone();
    }
    let provider = Arc::new(provider);
    let versions: Vec<&'static rustls::SupportedProtocolVersion> = [
        (TlsVersion::Tls12, &rustls::version::TLS12),
        (TlsVersion::Tls13, &rustls::version::TLS13),
    ]
    .into_iter()
    .filter(|(v, _)| (s.min_version..=s.max_version).contains(v))
    .map(|(_, p)| p)
    .collect();

    let roots = match &s.client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            let (added, ignored) = roots.add_parsable_certificates(certificates(ca, "client_ca")?);
            if added == 0 {
                return Err(format!(
                    "client_ca{} holds no usable CA certificate ({ignored} could not be used); \
                     check the file",
                    if matches!(ca, Pem::File(_)) {
                        "_file"
                    } else {
                        ""
                    }
                ));
            }
            Some(Arc::new(roots))
        }
        None => None,
    };
    let verifier: Arc<dyn ClientCertVerifier> = match (s.client_auth, roots) {
        (ClientAuth::NoClientCert, _) => WebPkiClientVerifier::no_client_auth(),
        (ClientAuth::RequestClientCert, roots) => {
            Arc::new(AnyCertificate::new(&provider, roots.as_deref(), false))
        }
        (ClientAuth::RequireAnyClientCert, roots) => {
            Arc::new(AnyCertificate::new(&provider, roots.as_deref(), true))
        }
        (ClientAuth::VerifyClientCertIfGiven, Some(roots)) => {
            WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
                .allow_unauthenticated()
                .build()
                .map_err(|e| format!("client_ca_file cannot verify client certificates: {e}"))?
        }
        (ClientAuth::RequireAndVerifyClientCert, Some(roots)) => {
            WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| format!("client_ca_file cannot verify client certificates: {e}"))?
        }
        // The parser refuses these.
        (auth, None) => return Err(format!("client_auth_type {auth:?} needs client_ca_file")),
    };

    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions)
        .map_err(|e| format!("tls_server_config cannot be used: {e}"))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => {
                "the private key (key_file) does not belong to the certificate (cert_file); give \
                 the key of that certificate"
                    .to_string()
            }
            e => format!("the certificate or key cannot be used: {e}"),
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.ignore_client_order = s.prefer_server_cipher_suites;
    Ok(config)
}

/// `RequestClientCert` and `RequireAnyClientCert`: a client certificate is asked for
/// (required or not) and not checked against any CA, as Go does; the handshake still proves
/// that the client holds its key. The client CA, when given, is only named in the request.
struct AnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
    hints: Vec<DistinguishedName>,
    mandatory: bool,
}

impl AnyCertificate {
    fn new(provider: &CryptoProvider, roots: Option<&RootCertStore>, mandatory: bool) -> Self {
        AnyCertificate {
            algorithms: provider.signature_verification_algorithms,
            hints: roots.map(RootCertStore::subjects).unwrap_or_default(),
            mandatory,
        }
    }
}

impl fmt::Debug for AnyCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnyCertificate")
            .field("mandatory", &self.mandatory)
            .finish()
    }
}

impl ClientCertVerifier for AnyCertificate {
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
