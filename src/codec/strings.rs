//! Validated string types: UTF-8 strings (MQTT 1.5.3 / 5.0 1.5.4), topic names and filters
//! (MQTT 4.7). Backed by `Bytes` so a decoded string shares the packet buffer (no copy).

use std::fmt;

use bytes::Bytes;

use super::error::StringError;

/// A UTF-8 encoded string as MQTT allows it: well-formed UTF-8 (Rust's `str` already excludes
/// surrogates) [MQTT-1.5.3-1], no U+0000 [MQTT-1.5.3-2], at most 65,535 bytes.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MqttStr(Bytes);

impl MqttStr {
    pub const MAX_LEN: usize = 65_535;

    /// Validates and copies `s`.
    pub fn new(s: &str) -> Result<MqttStr, StringError> {
        Self::check(s)?;
        Ok(MqttStr(Bytes::copy_from_slice(s.as_bytes())))
    }

    /// Validates `bytes` and keeps them without copying.
    pub fn from_bytes(bytes: Bytes) -> Result<MqttStr, StringError> {
        let s = std::str::from_utf8(&bytes).map_err(|_| StringError::InvalidUtf8)?;
        Self::check(s)?;
        Ok(MqttStr(bytes))
    }

    /// For string literals known to be valid; panics otherwise (a programming error).
    pub fn from_static(s: &'static str) -> MqttStr {
        Self::check(s).expect("invalid static MQTT string");
        MqttStr(Bytes::from_static(s.as_bytes()))
    }

    /// Keeps `bytes` without checking them.
    ///
    /// # Safety
    /// `bytes` must be valid UTF-8 (`as_str` relies on it); the codec also guarantees no U+0000
    /// and at most 65,535 bytes (see `check_topic_name`).
    pub(crate) unsafe fn from_bytes_unchecked(bytes: Bytes) -> MqttStr {
        MqttStr(bytes)
    }

    fn check(s: &str) -> Result<(), StringError> {
        if s.len() > Self::MAX_LEN {
            return Err(StringError::TooLong(s.len()));
        }
        if s.as_bytes().contains(&0) {
            return Err(StringError::NullCharacter);
        }
        Ok(())
    }

    pub fn as_str(&self) -> &str {
        // SAFETY: every constructor checked that the bytes are UTF-8.
        unsafe { std::str::from_utf8_unchecked(&self.0) }
    }

    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for MqttStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for MqttStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::ops::Deref for MqttStr {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl TryFrom<&str> for MqttStr {
    type Error = StringError;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        MqttStr::new(s)
    }
}

/// A topic name (what PUBLISH carries): a valid `MqttStr` without `+` or `#` [MQTT-3.3.2-2]
/// [MQTT-4.7.1-1]. Empty is representable because 5.0 allows an empty name with a topic alias;
/// the codec refuses it elsewhere [MQTT-4.7.3-1].
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct TopicName(MqttStr);

impl TopicName {
    pub fn new(s: &str) -> Result<TopicName, StringError> {
        Self::from_str(MqttStr::new(s)?)
    }

    #[allow(clippy::should_implement_trait)] // takes an MqttStr, not a &str
    pub fn from_str(s: MqttStr) -> Result<TopicName, StringError> {
        if s.as_bytes().iter().any(|&b| b == b'+' || b == b'#') {
            return Err(StringError::WildcardInTopicName);
        }
        Ok(TopicName(s))
    }

    /// Wraps a string already checked by `check_topic_name`.
    pub(crate) fn from_checked(s: MqttStr) -> TopicName {
        TopicName(s)
    }

    pub fn from_static(s: &'static str) -> TopicName {
        TopicName::from_str(MqttStr::from_static(s)).expect("invalid static topic name")
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    pub fn as_mqtt_str(&self) -> &MqttStr {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }
}

impl fmt::Debug for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::ops::Deref for TopicName {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

/// A topic filter (what SUBSCRIBE carries): non-empty [MQTT-4.7.3-1], `#` only as the whole last
/// level [MQTT-4.7.1-2], `+` only as a whole level [MQTT-4.7.1-3]. In 5.0 a shared subscription
/// `$share/{ShareName}/{filter}` is a filter too; `shared()` splits it (the 5.0 decoder checks
/// its form [MQTT-4.8.2-1], since in 3.1.1 `$share/...` is an ordinary filter).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicFilter(MqttStr);

impl TopicFilter {
    pub fn new(s: &str) -> Result<TopicFilter, StringError> {
        Self::from_str(MqttStr::new(s)?)
    }

    #[allow(clippy::should_implement_trait)] // takes an MqttStr, not a &str
    pub fn from_str(s: MqttStr) -> Result<TopicFilter, StringError> {
        validate_filter(s.as_str())?;
        Ok(TopicFilter(s))
    }

    pub fn from_static(s: &'static str) -> TopicFilter {
        TopicFilter::from_str(MqttStr::from_static(s)).expect("invalid static topic filter")
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    pub fn as_mqtt_str(&self) -> &MqttStr {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn has_wildcards(&self) -> bool {
        self.0.as_bytes().iter().any(|&b| b == b'+' || b == b'#')
    }

    /// For `$share/group/filter`: `Some(("group", "filter"))`.
    pub fn shared(&self) -> Option<(&str, &str)> {
        let rest = self.as_str().strip_prefix("$share/")?;
        let (group, filter) = rest.split_once('/')?;
        Some((group, filter))
    }
}

fn validate_filter(s: &str) -> Result<(), StringError> {
    if s.is_empty() {
        return Err(StringError::EmptyTopicFilter);
    }
    let mut levels = s.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return Err(StringError::MisplacedMultiLevelWildcard);
        }
        if level.contains('+') && level != "+" {
            return Err(StringError::MisplacedSingleLevelWildcard);
        }
    }
    Ok(())
}

impl fmt::Debug for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::ops::Deref for TopicFilter {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

/// Checks the bytes of a topic name in one pass, with the errors in the order `MqttStr::new`
/// then `TopicName::from_str` would report them: UTF-8, then U+0000, then wildcards. The decoder's
/// hot path: most topics are short ASCII, which skips the UTF-8 validator.
#[inline]
pub(crate) fn check_topic_name(bytes: &[u8]) -> Result<(), StringError> {
    let mut high = 0u8;
    let mut null = false;
    let mut wildcard = false;
    for &b in bytes {
        high |= b;
        null |= b == 0;
        wildcard |= b == b'+' || b == b'#';
    }
    if high >= 0x80 && std::str::from_utf8(bytes).is_err() {
        return Err(StringError::InvalidUtf8);
    }
    if bytes.len() > MqttStr::MAX_LEN {
        return Err(StringError::TooLong(bytes.len()));
    }
    if null {
        return Err(StringError::NullCharacter);
    }
    if wildcard {
        return Err(StringError::WildcardInTopicName);
    }
    Ok(())
}

/// The decoder's quick test for the common topic name: ASCII without U+0000, `+` or `#`, which
/// makes it a valid topic name. `false` says only "not that case"; `check_topic_name` decides.
/// Sixteen bytes at a time (the last block overlaps the one before it), which the compiler turns
/// into a few vector compares: a per-byte loop cost about 110 instructions for a 31-byte topic.
#[inline]
pub(crate) fn is_plain_topic_name(bytes: &[u8]) -> bool {
    #[inline(always)]
    fn plain_block(block: &[u8; 16]) -> bool {
        let mut bad = 0u8;
        for &b in block {
            bad |= u8::from(b >= 0x80) | u8::from(b == 0) | u8::from(b == b'+' || b == b'#');
        }
        bad == 0
    }
    if bytes.len() < 16 {
        return bytes
            .iter()
            .all(|&b| b < 0x80 && b != 0 && b != b'+' && b != b'#');
    }
    let last = bytes.len() - 16;
    let mut start = 0;
    while start < last {
        if !plain_block(bytes[start..start + 16].try_into().expect("16 bytes")) {
            return false;
        }
        start += 16;
    }
    plain_block(bytes[last..].try_into().expect("16 bytes"))
}
