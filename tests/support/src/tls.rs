//! Throwaway certificates for TLS tests: a private CA, a server certificate for
//! `localhost` and `127.0.0.1`, a client certificate, and a client certificate from a
//! second, untrusted CA, written as PEM files into a temporary directory.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tempfile::TempDir;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// PEM files of a test PKI; removed on drop.
#[derive(Debug)]
pub struct TestPki {
    dir: TempDir,
    /// The CA certificate both sides trust.
    pub ca: PathBuf,
    /// Server certificate (SANs `localhost`, `127.0.0.1`), signed by the CA.
    pub server_cert: PathBuf,
    /// Its private key.
    pub server_key: PathBuf,
    /// Client certificate (CN `taskrouter-test-client`), signed by the CA.
    pub client_cert: PathBuf,
    /// Its private key.
    pub client_key: PathBuf,
    /// A client certificate signed by another CA, which servers must refuse.
    pub rogue_cert: PathBuf,
    /// Its private key.
    pub rogue_key: PathBuf,
}

fn ca(name: &str) -> (CertificateParams, KeyPair, String) {
    let key = KeyPair::generate().expect("generate CA key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let pem = params.self_signed(&key).expect("self-sign CA").pem();
    (params, key, pem)
}

fn leaf(
    issuer: &Issuer<'_, KeyPair>,
    sans: &[&str],
    name: &str,
    usage: ExtendedKeyUsagePurpose,
) -> (String, String) {
    let key = KeyPair::generate().expect("generate leaf key");
    let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
    let mut params = CertificateParams::new(sans).expect("leaf params");
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![usage];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    let cert = params.signed_by(&key, issuer).expect("sign leaf");
    (cert.pem(), key.serialize_pem())
}

impl TestPki {
    /// Generates every certificate and writes the PEM files.
    pub fn generate() -> TestPki {
        let dir = tempfile::tempdir().expect("temporary directory for certificates");
        let write = |name: &str, pem: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, pem).expect("write PEM file");
            path
        };
        let (ca_params, ca_key, ca_pem) = ca("taskrouter test CA");
        let issuer = Issuer::new(ca_params, ca_key);
        let (server_pem, server_key) = leaf(
            &issuer,
            &["localhost", "127.0.0.1"],
            "localhost",
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client_pem, client_key) = leaf(
            &issuer,
            &[],
            "taskrouter-test-client",
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        let (rogue_params, rogue_ca_key, _) = ca("untrusted CA");
        let rogue_issuer = Issuer::new(rogue_params, rogue_ca_key);
        let (rogue_pem, rogue_key) = leaf(
            &rogue_issuer,
            &[],
            "rogue-client",
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        TestPki {
            ca: write("ca.pem", &ca_pem),
            server_cert: write("server.pem", &server_pem),
            server_key: write("server-key.pem", &server_key),
            client_cert: write("client.pem", &client_pem),
            client_key: write("client-key.pem", &client_key),
            rogue_cert: write("rogue.pem", &rogue_pem),
            rogue_key: write("rogue-key.pem", &rogue_key),
            dir,
        }
    }

    /// The directory holding the files (for extra files a test writes).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A tonic client config trusting the test CA, for server name `localhost`.
    pub fn client_config(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(&self.ca)))
            .domain_name("localhost")
    }

    /// [`Self::client_config`] presenting the CA-signed client certificate.
    pub fn client_config_with_identity(&self) -> ClientTlsConfig {
        self.client_config().identity(Identity::from_pem(
            read(&self.client_cert),
            read(&self.client_key),
        ))
    }

    /// [`Self::client_config`] presenting the certificate from the untrusted CA.
    pub fn client_config_with_rogue_identity(&self) -> ClientTlsConfig {
        self.client_config().identity(Identity::from_pem(
            read(&self.rogue_cert),
            read(&self.rogue_key),
        ))
    }
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}
