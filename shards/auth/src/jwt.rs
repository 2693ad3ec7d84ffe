//! JWT in the MQTT password field: HS256 (`jwt_secret`), RS256 or ES256
//! (`jwt_public_key_file`, the algorithm follows the key type). Signatures are checked by the
//! `jsonwebtoken` crate; the header's `alg` must be one that a configured key serves, nothing
//! else (no `none`, no HS256 with the public key as secret).
//!
//! Claims: `exp` is required, `nbf` is checked when present (both with `jwt_leeway_s`); a
//! `username` claim (or else `sub`) must equal the MQTT username when the client gave one, and
//! becomes the client's username when it gave none; an `acl` claim holds EMQX-style rules
//! ([`crate::ClaimRule`]).

use std::path::Path;
use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use crate::error::{read_bounded, AuthError};
use crate::rules::{parse_rules, ClaimRule};

/// Longest password still considered a token (16 KiB); longer ones are not tokens.
pub(crate) const JWT_BYTES_MAX: usize = 16 * 1024;

/// The configured keys.
pub(crate) struct JwtVerifier {
    hs256: Option<DecodingKey>,
    public: Option<(Algorithm, DecodingKey)>,
    leeway_s: u64,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("hs256", &self.hs256.is_some())
            .field("public", &self.public.as_ref().map(|(a, _)| a))
            .finish()
    }
}

/// The verdict on a password.
#[derive(Debug)]
pub(crate) enum JwtVerdict {
    /// Not shaped like a JWT: the next method may be tried.
    NotAToken,
    /// A token that fails (signature, algorithm, time, claims).
    Rejected(String),
    /// A valid token.
    Accepted {
        username: Option<String>,
        acl: Option<Arc<[ClaimRule]>>,
    },
}

/// Three non-empty base64url segments, within [`JWT_BYTES_MAX`].
fn looks_like_jwt(p: &[u8]) -> bool {
    p.len() <= JWT_BYTES_MAX
        && p.split(|&b| b == b'.').count() == 3
        && p.split(|&b| b == b'.').all(|s| {
            !s.is_empty()
                && s.iter()
                    .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

fn unix_number(v: &serde_json::Value) -> Option<f64> {
    v.as_f64().filter(|n| n.is_finite())
}

impl JwtVerifier {
    /// `None` when neither a secret nor a key file is configured.
    pub(crate) fn new(
        secret: Option<&str>,
        key_file: Option<&Path>,
        leeway_s: u64,
    ) -> Result<Option<JwtVerifier>, AuthError> {
        let hs256 = secret.map(|s| DecodingKey::from_secret(s.as_bytes()));
        let public = match key_file {
            None => None,
            Some(path) => {
                let pem = read_bounded(path)?;
                if let Ok(k) = DecodingKey::from_ec_pem(pem.as_bytes()) {
                    Some((Algorithm::ES256, k))
                } else if let Ok(k) = DecodingKey::from_rsa_pem(pem.as_bytes()) {
                    Some((Algorithm::RS256, k))
                } else {
                    return Err(AuthError::JwtKey {
                        path: path.to_path_buf(),
                        message: "not an RSA or EC (P-256) public key in PEM".into(),
                    });
                }
            }
        };
        if hs256.is_none() && public.is_none() {
            return Ok(None);
        }
        Ok(Some(JwtVerifier {
            hs256,
            public,
            leeway_s,
        }))
    }

    /// Checks `password` as a token at `now_s` (Unix seconds).
    pub(crate) fn verify(
        &self,
        password: &[u8],
        mqtt_username: Option<&str>,
        now_s: u64,
    ) -> JwtVerdict {
        if !looks_like_jwt(password) {
            return JwtVerdict::NotAToken;
        }
        // looks_like_jwt accepted only ASCII
        let Ok(token) = std::str::from_utf8(password) else {
            return JwtVerdict::NotAToken;
        };
        let header = match jsonwebtoken::decode_header(token) {
            Ok(h) => h,
            Err(e) => return JwtVerdict::Rejected(format!("header: {e}")),
        };
        let key = match header.alg {
            Algorithm::HS256 => self.hs256.as_ref(),
            alg => self
                .public
                .as_ref()
                .filter(|(a, _)| *a == alg)
                .map(|(_, k)| k),
        };
        let Some(key) = key else {
            return JwtVerdict::Rejected(format!("algorithm {:?} not accepted", header.alg));
        };
        let mut validation = Validation::new(header.alg);
        // Times are checked below against `now_s`, claims by this module.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        let claims = match jsonwebtoken::decode::<serde_json::Value>(token, key, &validation) {
            Ok(d) => d.claims,
            Err(e) => return JwtVerdict::Rejected(format!("{e}")),
        };
        let now = now_s as f64;
        let leeway = self.leeway_s as f64;
        match claims.get("exp").map(unix_number) {
            None => return JwtVerdict::Rejected("no exp claim".into()),
            Some(None) => return JwtVerdict::Rejected("exp is not a number".into()),
            Some(Some(exp)) if now >= exp + leeway => {
                return JwtVerdict::Rejected("expired".into())
            }
            Some(Some(_)) => {}
        }
        match claims.get("nbf").map(unix_number) {
            None => {}
            Some(None) => return JwtVerdict::Rejected("nbf is not a number".into()),
            Some(Some(nbf)) if now + leeway < nbf => {
                return JwtVerdict::Rejected("not yet valid".into())
            }
            Some(Some(_)) => {}
        }
        let claimed = match claims.get("username").or_else(|| claims.get("sub")) {
            None => None,
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(_) => return JwtVerdict::Rejected("username/sub claim is not a string".into()),
        };
        let username = match (mqtt_username, claimed) {
            (Some(u), Some(c)) if u != c => {
                return JwtVerdict::Rejected("username claim differs from the MQTT username".into())
            }
            (Some(u), _) => Some(u.to_owned()),
            (None, c) => c,
        };
        let acl = match claims.get("acl") {
            None => None,
            Some(v) => match parse_rules(v) {
                Ok(r) => Some(r),
                Err(e) => return JwtVerdict::Rejected(e),
            },
        };
        JwtVerdict::Accepted { username, acl }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    const NOW: u64 = 1_800_000_000;
    fn fixture(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name)
    }
    fn pem(name: &str) -> Vec<u8> {
        std::fs::read(fixture(name)).unwrap()
    }
    fn sign(alg: Algorithm, key: &EncodingKey, claims: serde_json::Value) -> Vec<u8> {
        jsonwebtoken::encode(&Header::new(alg), &claims, key)
            .unwrap()
            .into_bytes()
    }
    fn hs() -> JwtVerifier {
        JwtVerifier::new(Some("s3cret"), None, 0).unwrap().unwrap()
    }
    fn accepted(v: JwtVerdict) -> (Option<String>, Option<Arc<[ClaimRule]>>) {
        match v {
            JwtVerdict::Accepted { username, acl } => (username, acl),
            other => panic!("{other:?}"),
        }
    }
    fn rejected(v: JwtVerdict) -> String {
        match v {
            JwtVerdict::Rejected(why) => why,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn hs256_valid_expired_not_yet_wrong_secret() {
        let key = EncodingKey::from_secret(b"s3cret");
        let v = hs();
        let ok = sign(
            Algorithm::HS256,
            &key,
            json!({"exp": NOW + 60, "username": "u"}),
        );
        assert_eq!(
            accepted(v.verify(&ok, Some("u"), NOW)).0.as_deref(),
            Some("u")
        );
        assert_eq!(
            accepted(v.verify(&ok, None, NOW)).0.as_deref(),
            Some("u"),
            "claim adopted"
        );
        assert!(rejected(v.verify(&ok, Some("other"), NOW)).contains("differs"));
        assert_eq!(rejected(v.verify(&ok, Some("u"), NOW + 60)), "expired");
        let early = sign(
            Algorithm::HS256,
            &key,
            json!({"exp": NOW + 60, "nbf": NOW + 10}),
        );
        assert_eq!(rejected(v.verify(&early, None, NOW)), "not yet valid");
        assert!(matches!(
            v.verify(&early, None, NOW + 10),
            JwtVerdict::Accepted { .. }
        ));
        let no_exp = sign(Algorithm::HS256, &key, json!({"sub": "u"}));
        assert_eq!(rejected(v.verify(&no_exp, None, NOW)), "no exp claim");
        let other = sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(b"nope"),
            json!({"exp": NOW + 60}),
        );
        assert!(rejected(v.verify(&other, None, NOW)).contains("ignature"));
        let leeway = JwtVerifier::new(Some("s3cret"), None, 5).unwrap().unwrap();
        assert!(matches!(
            leeway.verify(&ok, None, NOW + 64),
            JwtVerdict::Accepted { .. }
        ));
    }

    #[test]
    fn rs256_and_es256_follow_the_key_type() {
        let rsa = JwtVerifier::new(None, Some(&fixture("rsa_public.pem")), 0)
            .unwrap()
            .unwrap();
        let ec = JwtVerifier::new(None, Some(&fixture("ec_public.pem")), 0)
            .unwrap()
            .unwrap();
        let rsa_key = EncodingKey::from_rsa_pem(&pem("rsa_private.pem")).unwrap();
        let ec_key = EncodingKey::from_ec_pem(&pem("ec_private.pem")).unwrap();
        let ec_other = EncodingKey::from_ec_pem(&pem("ec_other_private.pem")).unwrap();
        let claims = json!({"exp": NOW + 60, "sub": "dev"});
        let rs = sign(Algorithm::RS256, &rsa_key, claims.clone());
        let es = sign(Algorithm::ES256, &ec_key, claims.clone());
        assert!(matches!(
            rsa.verify(&rs, Some("dev"), NOW),
            JwtVerdict::Accepted { .. }
        ));
        assert!(matches!(
            ec.verify(&es, Some("dev"), NOW),
            JwtVerdict::Accepted { .. }
        ));
        assert!(rejected(rsa.verify(&es, None, NOW)).contains("not accepted"));
        assert!(rejected(ec.verify(&rs, None, NOW)).contains("not accepted"));
        let forged = sign(Algorithm::ES256, &ec_other, claims.clone());
        assert!(rejected(ec.verify(&forged, None, NOW)).contains("ignature"));
        // HS256 signed with the public key's bytes as the secret: no HS key configured.
        let confused = sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(&pem("rsa_public.pem")),
            claims,
        );
        assert!(rejected(rsa.verify(&confused, None, NOW)).contains("not accepted"));
        let expired = sign(Algorithm::ES256, &ec_key, json!({"exp": NOW - 1}));
        assert_eq!(rejected(ec.verify(&expired, None, NOW)), "expired");
    }

    #[test]
    fn bad_key_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.pem");
        std::fs::write(
            &p,
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
        )
        .unwrap();
        assert!(matches!(
            JwtVerifier::new(None, Some(&p), 0),
            Err(AuthError::JwtKey { .. })
        ));
        assert!(JwtVerifier::new(None, None, 0).unwrap().is_none());
    }

    #[test]
    fn acl_claims_are_parsed_and_bad_ones_reject() {
        let key = EncodingKey::from_secret(b"s3cret");
        let v = hs();
        let t = sign(
            Algorithm::HS256,
            &key,
            json!({"exp": NOW + 9,
            "acl": [{"permission": "allow", "action": "publish", "topic": "t/#"}]}),
        );
        let (_, acl) = accepted(v.verify(&t, None, NOW));
        assert_eq!(acl.unwrap().len(), 1);
        let bad = sign(
            Algorithm::HS256,
            &key,
            json!({"exp": NOW + 9, "acl": {"pub": ["a"]}}),
        );
        assert!(rejected(v.verify(&bad, None, NOW)).contains("array"));
    }

    #[test]
    fn hostile_inputs() {
        let v = hs();
        for p in [
            &b""[..],
            b"plain password",
            b"a.b",
            b"a..c",
            b"\xff\xfe.\x00.x",
            b"a.b.c.d",
        ] {
            assert!(
                matches!(v.verify(p, None, NOW), JwtVerdict::NotAToken),
                "{p:?}"
            );
        }
        assert!(matches!(
            v.verify(b"aaaa.bbbb.cccc", None, NOW),
            JwtVerdict::Rejected(_)
        ));
        let big = vec![b'a'; 64 * 1024];
        assert!(matches!(v.verify(&big, None, NOW), JwtVerdict::NotAToken));
        // `alg: none`
        let none = b"eyJhbGciOiJub25lIn0.eyJleHAiOjk5OTk5OTk5OTl9.x";
        assert!(matches!(v.verify(none, None, NOW), JwtVerdict::Rejected(_)));
    }
}
