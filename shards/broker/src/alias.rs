//! Topic aliases (MQTT 5.0 §3.3.2.3.4), one table per direction and per network connection.
//!
//! Aliases belong to the connection, not the session: both tables start empty on every
//! connection and are dropped when it goes (MQTT-3.3.2-7).
//!
//! - [`InboundAliases`]: what the client told us. Bounded by the Topic Alias Maximum we announce
//!   in CONNACK (`mqtt.max_topic_alias`).
//! - [`OutboundAliases`]: what we told the client. Bounded by the Topic Alias Maximum the client
//!   sent in CONNECT. The first delivery on a topic carries the topic and a new alias, later ones
//!   an empty topic and the alias. When every alias is taken, the oldest assignment is reused
//!   (first in, first out), so a client with many topics still gets aliases for its recent ones.

use shardmq_codec::ByteStr;

/// Why a client's topic alias is refused. Each maps to the DISCONNECT reason the spec asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AliasError {
    /// Alias 0, or above the announced maximum: 0x94 Topic Alias invalid (MQTT-3.3.2-8, -9).
    Invalid,
    /// Empty topic with an alias that has no mapping: 0x82 Protocol error.
    Unknown,
}

/// The client's aliases for topics it publishes on.
#[derive(Debug, Default)]
pub struct InboundAliases {
    /// Index `alias - 1` holds the topic, or an empty string for no mapping. Grows only as far as
    /// the highest alias used, never past the announced maximum.
    topics: Vec<ByteStr>,
}

impl InboundAliases {
    /// Resolves a PUBLISH's topic and alias into the topic to route, recording a new mapping when
    /// both are present. `max` is the Topic Alias Maximum we announced (0: aliases refused).
    /// `topic` empty with no alias is returned as is: topic validation refuses it.
    pub fn resolve(
        &mut self,
        topic: &ByteStr,
        alias: Option<u16>,
        max: u16,
    ) -> Result<ByteStr, AliasError> {
        let Some(alias) = alias else {
            return Ok(topic.clone());
        };
        if alias == 0 || alias > max {
            return Err(AliasError::Invalid);
        }
        let i = usize::from(alias - 1);
        if topic.is_empty() {
            return match self.topics.get(i) {
                Some(t) if !t.is_empty() => Ok(t.clone()),
                _ => Err(AliasError::Unknown),
            };
        }
        if self.topics.len() <= i {
            self.topics.resize(i + 1, ByteStr::default());
        }
        // Detached: the table outlives the read buffer the topic was decoded from.
        if self.topics[i] != *topic {
            self.topics[i] = topic.detach();
        }
        Ok(topic.clone())
    }

    /// Mappings held.
    pub fn len(&self) -> usize {
        self.topics.iter().filter(|t| !t.is_empty()).count()
    }

    /// True when no alias is mapped.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How an outgoing PUBLISH names its topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutAlias {
    /// Full topic, no alias (aliases off, or a resend).
    None,
    /// Full topic plus this newly assigned alias.
    Assign(u16),
    /// Empty topic and this alias, which the client already knows.
    Reuse(u16),
}

/// Our aliases for topics we send to the client.
#[derive(Debug, Default)]
pub struct OutboundAliases {
    /// The client's Topic Alias Maximum (0: it accepts none).
    max: u16,
    by_topic: ahash::AHashMap<ByteStr, u16>,
    /// Index `alias - 1` holds the topic.
    topics: Vec<ByteStr>,
    /// Next alias to reuse once all `max` are taken (1-based).
    next_evict: u16,
}

impl OutboundAliases {
    /// An empty table for a connection whose client accepts up to `max` aliases.
    pub fn new(max: u16) -> OutboundAliases {
        OutboundAliases {
            max,
            next_evict: 1,
            ..Default::default()
        }
    }

    /// The client's maximum.
    pub fn max(&self) -> u16 {
        self.max
    }

    /// Extra bytes the alias property may add to a PUBLISH (for size checks).
    pub fn overhead(&self) -> usize {
        if self.max > 0 {
            3
        } else {
            0
        }
    }

    /// The alias to use for `topic`, assigning one if needed. No allocation once the topic has an
    /// alias.
    pub fn alias_for(&mut self, topic: &ByteStr) -> OutAlias {
        if self.max == 0 || topic.is_empty() {
            return OutAlias::None;
        }
        if let Some(&a) = self.by_topic.get(topic) {
            return OutAlias::Reuse(a);
        }
        let alias = if self.topics.len() < usize::from(self.max) {
            self.topics.push(ByteStr::default());
            self.topics.len() as u16
        } else {
            let a = self.next_evict;
            self.next_evict = if a >= self.max { 1 } else { a + 1 };
            let old = std::mem::take(&mut self.topics[usize::from(a - 1)]);
            self.by_topic.remove(&old);
            a
        };
        let topic = topic.detach();
        self.topics[usize::from(alias - 1)] = topic.clone();
        self.by_topic.insert(topic, alias);
        OutAlias::Assign(alias)
    }

    /// Aliases assigned.
    pub fn len(&self) -> usize {
        self.by_topic.len()
    }

    /// True when no alias is assigned.
    pub fn is_empty(&self) -> bool {
        self.by_topic.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: &str) -> ByteStr {
        ByteStr::from(x)
    }

    #[test]
    fn inbound_alias_maps_then_resolves_an_empty_topic() {
        let mut a = InboundAliases::default();
        assert_eq!(a.resolve(&s("a/b"), Some(3), 10), Ok(s("a/b")));
        assert_eq!(a.resolve(&s(""), Some(3), 10), Ok(s("a/b")));
        // Remapped.
        assert_eq!(a.resolve(&s("c"), Some(3), 10), Ok(s("c")));
        assert_eq!(a.resolve(&s(""), Some(3), 10), Ok(s("c")));
        assert_eq!(a.len(), 1);
        // No alias: topic as is, table untouched.
        assert_eq!(a.resolve(&s("x"), None, 10), Ok(s("x")));
        assert_eq!(a.resolve(&s(""), None, 10), Ok(s("")));
    }

    #[test]
    fn inbound_alias_zero_or_above_max_is_invalid() {
        let mut a = InboundAliases::default();
        assert_eq!(a.resolve(&s("t"), Some(0), 10), Err(AliasError::Invalid));
        assert_eq!(a.resolve(&s("t"), Some(11), 10), Err(AliasError::Invalid));
        assert_eq!(a.resolve(&s("t"), Some(1), 0), Err(AliasError::Invalid));
        assert!(a.is_empty());
    }

    #[test]
    fn inbound_empty_topic_with_unknown_alias_is_a_protocol_error() {
        let mut a = InboundAliases::default();
        assert_eq!(a.resolve(&s(""), Some(2), 10), Err(AliasError::Unknown));
        a.resolve(&s("t"), Some(5), 10).unwrap();
        assert_eq!(a.resolve(&s(""), Some(2), 10), Err(AliasError::Unknown));
    }

    #[test]
    fn outbound_assigns_then_reuses_and_evicts_oldest_when_full() {
        let mut o = OutboundAliases::new(2);
        assert_eq!(o.alias_for(&s("a")), OutAlias::Assign(1));
        assert_eq!(o.alias_for(&s("a")), OutAlias::Reuse(1));
        assert_eq!(o.alias_for(&s("b")), OutAlias::Assign(2));
        assert_eq!(o.alias_for(&s("c")), OutAlias::Assign(1), "oldest reused");
        assert_eq!(o.alias_for(&s("a")), OutAlias::Assign(2));
        assert_eq!(o.alias_for(&s("c")), OutAlias::Reuse(1));
        assert_eq!(o.alias_for(&s("a")), OutAlias::Reuse(2));
        assert_eq!(o.len(), 2);
    }

    #[test]
    fn outbound_off_when_client_maximum_is_zero() {
        let mut o = OutboundAliases::new(0);
        assert_eq!(o.alias_for(&s("a")), OutAlias::None);
        assert_eq!(o.alias_for(&s("a")), OutAlias::None);
        assert_eq!(o.overhead(), 0);
    }
}
