//! Who is calling: bearer tokens from configuration, and client certificates under mTLS.
//!
//! The check runs on every call of the incident service (health and reflection stay open, so
//! that Kubernetes probes and `grpcurl list` work). A call without a token gets
//! UNAUTHENTICATED; a call with a token that is not configured gets PERMISSION_DENIED. The
//! identity found is attached to the request and recorded with every status change.

use tonic::{Request, Status};

use crate::config::TokenConfig;

/// The authenticated caller: a token's identity or a client certificate's common name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity(pub String);

/// Checks calls against the configured tokens and client certificates.
#[derive(Debug, Clone)]
pub struct Authenticator {
    tokens: Vec<TokenConfig>,
    client_certificates: bool,
}

impl Authenticator {
    /// An authenticator for these tokens; `client_certificates` when the server requires
    /// them (mTLS).
    pub fn new(tokens: Vec<TokenConfig>, client_certificates: bool) -> Authenticator {
        Authenticator {
            tokens,
            client_certificates,
        }
    }

    /// Checks one call and attaches its [`Identity`] when there is one.
    ///
    /// # Errors
    ///
    /// Returns UNAUTHENTICATED without a well-formed bearer token, PERMISSION_DENIED with an
    /// unknown one.
    pub fn check(&self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if !self.tokens.is_empty() {
            let Some(header) = request.metadata().get("authorization") else {
                return Err(Status::unauthenticated(
                    "missing bearer token: send `authorization: Bearer <token>`",
                ));
            };
            let token = header
                .to_str()
                .ok()
                .and_then(|value| value.split_once(' '))
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                .map(|(_, token)| token)
                .ok_or_else(|| {
                    Status::unauthenticated("malformed authorization header: want `Bearer <token>`")
                })?;
            let identity = self
                .tokens
                .iter()
                .find(|known| constant_time_eq(known.token.as_bytes(), token.trim().as_bytes()))
                .map(|known| known.identity.clone())
                .ok_or_else(|| Status::permission_denied("bearer token not accepted"))?;
            request.extensions_mut().insert(Identity(identity));
            return Ok(request);
        }
        if self.client_certificates {
            let name = request
                .peer_certs()
                .and_then(|certs| certs.first().and_then(|cert| common_name(cert.as_ref())))
                .unwrap_or_else(|| "client-certificate".to_owned());
            request.extensions_mut().insert(Identity(name));
        }
        Ok(request)
    }
}

/// Compares two byte strings in time that depends only on their lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// One DER element: its tag, its content and what follows it.
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (length, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let num_bytes = usize::from(first & 0x7f);
        if num_bytes == 0 || num_bytes > 4 || rest.len() < num_bytes {
            return None;
        }
        let length = rest[..num_bytes]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (length, &rest[num_bytes..])
    };
    if rest.len() < length {
        return None;
    }
    Some((tag, &rest[..length], &rest[length..]))
}

/// The subject common name (OID 2.5.4.3) of a DER certificate.
pub fn common_name(certificate: &[u8]) -> Option<String> {
    const SEQUENCE: u8 = 0x30;
    let (tag, certificate, _) = der_element(certificate)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, tbs, _) = der_element(certificate)?;
    if tag != SEQUENCE {
        return None;
    }
    let mut rest = tbs;
    let (tag, _, after) = der_element(rest)?;
    if tag == 0xa0 {
        rest = after; // explicit version
    }
    // serialNumber, signature, issuer, validity, then subject.
    for _ in 0..4 {
        rest = der_element(rest)?.2;
    }
    let (tag, mut subject, _) = der_element(rest)?;
    if tag != SEQUENCE {
        return None;
    }
    while !subject.is_empty() {
        let (_, set, after) = der_element(subject)?;
        subject = after;
        let (_, attribute, _) = der_element(set)?;
        let (oid_tag, oid, value) = der_element(attribute)?;
        if oid_tag == 0x06 && oid == [0x55, 0x04, 0x03] {
            let (_, name, _) = der_element(value)?;
            return String::from_utf8(name.to_vec()).ok();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authenticator() -> Authenticator {
        Authenticator::new(
            vec![TokenConfig {
                identity: "soc-dashboard".to_owned(),
                token: "0123456789abcdef0123".to_owned(),
            }],
            false,
        )
    }

    fn request(authorization: Option<&str>) -> Request<()> {
        let mut request = Request::new(());
        if let Some(value) = authorization {
            request
                .metadata_mut()
                .insert("authorization", value.parse().unwrap());
        }
        request
    }

    #[test]
    fn missing_token_is_unauthenticated_and_wrong_token_is_denied() {
        let auth = authenticator();
        let missing = auth.check(request(None)).unwrap_err();
        assert_eq!(missing.code(), tonic::Code::Unauthenticated);
        let malformed = auth.check(request(Some("Basic abc"))).unwrap_err();
        assert_eq!(malformed.code(), tonic::Code::Unauthenticated);
        let wrong = auth
            .check(request(Some("Bearer 0123456789abcdef0124")))
            .unwrap_err();
        assert_eq!(wrong.code(), tonic::Code::PermissionDenied);
        let lower_case_scheme = auth.check(request(Some("bearer 0123456789abcdef0123")));
        assert!(lower_case_scheme.is_ok(), "the scheme is case-insensitive");
        let right = auth
            .check(request(Some("Bearer 0123456789abcdef0123")))
            .unwrap();
        assert_eq!(
            right.extensions().get::<Identity>(),
            Some(&Identity("soc-dashboard".to_owned()))
        );
    }

    #[test]
    fn subject_common_name_is_read_from_a_certificate() {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "tidemark");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "analyst-alice");
        let key = rcgen::KeyPair::generate().unwrap();
        let certificate = params.self_signed(&key).unwrap();
        assert_eq!(
            common_name(certificate.der()).as_deref(),
            Some("analyst-alice")
        );
        assert_eq!(common_name(b"\x30\x03\x02\x01"), None);
        assert_eq!(common_name(b""), None);
    }
}
