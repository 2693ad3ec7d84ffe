//! The HTTP hook: `POST http_url` with
//! `{"clientid","username","password","peerhost","protocol"}` (plus `cert_common_name` when
//! the client presented a certificate), answered by `200` and
//! `{"result":"allow"|"deny"|"ignore","is_superuser":bool,"acl":[…]}` (EMQX's HTTP
//! authentication). Anything else (another status, a timeout, a malformed body) is a failure:
//! logged, and the client is not authorized. Definite answers are cached (bounded, with a TTL),
//! keyed by a SHA-256 of username, password, client id and peer address, so a changed password
//! never hits a cached answer.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::rules::{parse_rules, ClaimRule};
use crate::service::AuthRequest;

/// Largest answer body read (64 KiB).
pub(crate) const HTTP_BODY_BYTES_MAX: u64 = 64 * 1024;

/// A definite answer of the hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HookAnswer {
    Allow {
        superuser: bool,
        acl: Option<Arc<[ClaimRule]>>,
    },
    Deny,
    Ignore,
}

type Key = [u8; 32];

/// A bounded cache of answers with a TTL; the oldest entry goes first when it is full.
#[derive(Debug)]
pub(crate) struct AnswerCache {
    max: usize,
    ttl_ms: u64,
    map: HashMap<Key, (u64, HookAnswer)>,
    /// Insertion order; entries whose time no longer matches the map's are stale.
    order: VecDeque<(Key, u64)>,
}

impl AnswerCache {
    pub(crate) fn new(max: usize, ttl_ms: u64) -> AnswerCache {
        AnswerCache {
            max,
            ttl_ms,
            map: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    pub(crate) fn get(&mut self, key: &Key, now_ms: u64) -> Option<HookAnswer> {
        let (at, answer) = self.map.get(key)?;
        if now_ms.saturating_sub(*at) < self.ttl_ms {
            return Some(answer.clone());
        }
        self.map.remove(key);
        None
    }

    pub(crate) fn insert(&mut self, key: Key, answer: HookAnswer, now_ms: u64) {
        if self.max == 0 || self.ttl_ms == 0 {
            return;
        }
        self.map.insert(key, (now_ms, answer));
        self.order.push_back((key, now_ms));
        while self.map.len() > self.max {
            let Some((k, at)) = self.order.pop_front() else {
                break;
            };
            if self.map.get(&k).is_some_and(|(t, _)| *t == at) {
                self.map.remove(&k);
            }
        }
        if self.order.len() > 2 * self.max {
            let map = &self.map;
            self.order
                .retain(|(k, at)| map.get(k).is_some_and(|(t, _)| t == at));
        }
        debug_assert!(self.map.len() <= self.max && self.order.len() <= 2 * self.max + 1);
    }

    pub(crate) fn clear(&mut self) {
        self.map.clear();
        self.order.clear();
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

pub(crate) fn cache_key(req: &AuthRequest) -> Key {
    let mut h = Sha256::new();
    let mut field = |tag: u8, v: Option<&[u8]>| {
        h.update([tag, v.is_some() as u8]);
        let v = v.unwrap_or_default();
        h.update((v.len() as u64).to_be_bytes());
        h.update(v);
    };
    field(1, req.username.as_deref().map(str::as_bytes));
    field(2, req.password.as_deref());
    field(3, Some(req.client_id.as_bytes()));
    field(4, Some(req.peer.to_string().as_bytes()));
    h.finalize().into()
}

/// The configured hook.
pub(crate) struct HttpHook {
    agent: ureq::Agent,
    url: String,
    cache: Mutex<AnswerCache>,
}

impl std::fmt::Debug for HttpHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpHook").field("url", &self.url).finish()
    }
}

impl HttpHook {
    pub(crate) fn new(url: &str, timeout_ms: u64, cache_max: usize, cache_ttl_ms: u64) -> HttpHook {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_millis(timeout_ms.max(1))))
            .http_status_as_error(false)
            .max_redirects(0)
            .build()
            .into();
        HttpHook {
            agent,
            url: url.to_owned(),
            cache: Mutex::new(AnswerCache::new(cache_max, cache_ttl_ms)),
        }
    }

    pub(crate) fn clear_cache(&self) {
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Asks the hook (or the cache). Blocking: call it on a worker thread.
    pub(crate) fn ask(&self, req: &AuthRequest, now_ms: u64) -> Result<HookAnswer, String> {
        // The JSON carries the password as a string: a password that is not UTF-8 cannot be
        // sent faithfully, so the hook has no opinion on it.
        let password = match req.password.as_deref().map(std::str::from_utf8) {
            None => None,
            Some(Ok(p)) => Some(p),
            Some(Err(_)) => return Ok(HookAnswer::Ignore),
        };
        let key = cache_key(req);
        if let Some(hit) = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key, now_ms)
        {
            return Ok(hit);
        }
        let mut body = serde_json::json!({
            "clientid": req.client_id,
            "username": req.username,
            "password": password,
            "peerhost": req.peer.to_string(),
            "protocol": req.protocol_version,
        });
        if let Some(cn) = &req.cert_name {
            body["cert_common_name"] = cn.clone().into();
        }
        let answer = self.post(&body)?;
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, answer.clone(), now_ms);
        Ok(answer)
    }

    fn post(&self, body: &serde_json::Value) -> Result<HookAnswer, String> {
        let mut resp = self
            .agent
            .post(&self.url)
            .header("content-type", "application/json")
            .send(body.to_string())
            .map_err(|e| format!("request failed: {e}"))?;
        if resp.status().as_u16() != 200 {
            return Err(format!("status {}", resp.status().as_u16()));
        }
        let bytes = resp
            .body_mut()
            .with_config()
            .limit(HTTP_BODY_BYTES_MAX)
            .read_to_vec()
            .map_err(|e| format!("reading the answer: {e}"))?;
        parse_answer(&bytes)
    }
}

pub(crate) fn parse_answer(bytes: &[u8]) -> Result<HookAnswer, String> {
    let v: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("answer is not JSON: {e}"))?;
    match v.get("result").and_then(|r| r.as_str()) {
        Some("allow") => {
            let superuser = match v.get("is_superuser") {
                None | Some(serde_json::Value::Null) => false,
                Some(serde_json::Value::Bool(b)) => *b,
                Some(_) => return Err("is_superuser is not a boolean".into()),
            };
            let acl = match v.get("acl") {
                None | Some(serde_json::Value::Null) => None,
                Some(a) => Some(parse_rules(a)?),
            };
            Ok(HookAnswer::Allow { superuser, acl })
        }
        Some("deny") => Ok(HookAnswer::Deny),
        Some("ignore") => Ok(HookAnswer::Ignore),
        _ => Err("answer has no result allow|deny|ignore".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> Key {
        [n; 32]
    }

    #[test]
    fn cache_ttl_and_bound() {
        let mut c = AnswerCache::new(2, 100);
        c.insert(key(1), HookAnswer::Deny, 0);
        assert_eq!(c.get(&key(1), 99), Some(HookAnswer::Deny));
        assert_eq!(c.get(&key(1), 100), None, "expired");
        c.insert(key(1), HookAnswer::Ignore, 200);
        c.insert(key(2), HookAnswer::Deny, 201);
        c.insert(key(3), HookAnswer::Deny, 202);
        assert_eq!(c.len(), 2);
        assert_eq!(c.get(&key(1), 203), None, "oldest evicted");
        for i in 0..100u64 {
            c.insert(key(9), HookAnswer::Deny, 300 + i);
        }
        assert!(c.order.len() <= 5);
        let mut off = AnswerCache::new(0, 100);
        off.insert(key(1), HookAnswer::Deny, 0);
        assert_eq!(off.get(&key(1), 0), None);
    }

    #[test]
    fn answers_parse() {
        assert_eq!(parse_answer(br#"{"result":"deny"}"#), Ok(HookAnswer::Deny));
        assert_eq!(
            parse_answer(br#"{"result":"ignore"}"#),
            Ok(HookAnswer::Ignore)
        );
        assert_eq!(
            parse_answer(br#"{"result":"allow","is_superuser":true}"#),
            Ok(HookAnswer::Allow {
                superuser: true,
                acl: None
            })
        );
        match parse_answer(
            br#"{"result":"allow","acl":[{"permission":"allow","action":"all","topic":"a"}]}"#,
        ) {
            Ok(HookAnswer::Allow {
                superuser: false,
                acl: Some(a),
            }) => assert_eq!(a.len(), 1),
            other => panic!("{other:?}"),
        }
        for bad in [
            &b"nope"[..],
            br#"{"result":"maybe"}"#,
            br#"{"result":"allow","is_superuser":"yes"}"#,
            br#"{}"#,
        ] {
            assert!(parse_answer(bad).is_err());
        }
    }
}
