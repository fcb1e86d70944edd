//! Test certificates: a CA, server certificates for `localhost` and
//! 127.0.0.1, and client certificates whose common name is a user.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use dduomq_client::{ClientIdentity, TlsOptions};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

/// A certificate authority.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        Ca {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    fn issue(&self, params: CertificateParams) -> Issued {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// A broker's certificate: `localhost` and 127.0.0.1, for serving and for
    /// dialing other brokers.
    pub fn server(&self) -> Issued {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "dduomq-broker");
        params.subject_alt_names = vec![
            SanType::DnsName("localhost".try_into().unwrap()),
            SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.issue(params)
    }

    /// A client certificate of the user `name`.
    pub fn client(&self, name: &str) -> Issued {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params)
    }

    /// Client options trusting this CA, with `identity` if given.
    pub fn trusted_by(&self, identity: Option<&Issued>) -> TlsOptions {
        TlsOptions {
            ca_pem: Some(self.pem().into_bytes()),
            identity: identity.map(|i| ClientIdentity {
                cert_pem: i.cert_pem.clone().into_bytes(),
                key_pem: i.key_pem.clone().into_bytes(),
            }),
            domain: Some("localhost".into()),
        }
    }
}

/// Writes `contents` to `path` atomically (as a Secret volume's update is).
pub fn replace(path: &Path, contents: &str) {
    let staged = path.with_extension("staged");
    std::fs::write(&staged, contents).unwrap();
    std::fs::rename(&staged, path).unwrap();
}

/// A broker's TLS files in `dir`: its certificate, key and the CA.
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

impl TlsFiles {
    pub fn write(dir: &Path, ca: &Ca, server: &Issued) -> TlsFiles {
        let files = TlsFiles {
            cert: dir.join("tls.crt"),
            key: dir.join("tls.key"),
            ca: dir.join("ca.crt"),
        };
        replace(&files.cert, &server.cert_pem);
        replace(&files.key, &server.key_pem);
        replace(&files.ca, &ca.pem());
        files
    }

    /// The `[tls]` table serving these files; `client_auth` none, optional
    /// or required (clients verified against the same CA).
    pub fn table(&self, client_auth: &str) -> String {
        format!(
            "[tls]\nenabled = true\ncert_file = {:?}\nkey_file = {:?}\nclient_auth = {client_auth:?}\nclient_ca_file = {:?}\nca_file = {:?}\nreload_interval = \"100ms\"\n",
            self.cert, self.key, self.ca, self.ca
        )
    }
}
