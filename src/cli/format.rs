//! `simqtt sub -F FORMAT`: mosquitto_sub's output format, byte for byte. `%` specifiers print
//! fields of the message (with mosquitto's `-`, `0`, width and precision modifiers), `@`
//! specifiers print the local time through strftime(3), `\` escapes print control
//! characters, and `%j`/`%J` print the message as JSON the way mosquitto's cJSON does
//! (`--pretty`: indented with tabs).

use std::ffi::CString;

use simqtt::codec::PublishProperties;

/// What `-F` can print of one message.
pub struct Fields<'a> {
    pub topic: &'a str,
    pub payload: &'a [u8],
    pub qos: u8,
    pub retain: bool,
    /// The packet identifier (0 for QoS 0), as mosquitto's `mid`.
    pub mid: u16,
    /// 5.0 properties when the message carried any.
    pub properties: Option<&'a PublishProperties>,
}

/// Checks a format as mosquitto does before connecting; the error is mosquitto's text.
pub fn check(format: &str) -> Result<(), String> {
    let s = format.as_bytes();
    let len = s.len();
    let mut i = 0;
    let incomplete = || Err("Error: Incomplete format specifier.".to_string());
    while i < len {
        match s[i] {
            b'%' => {
                if i == len - 1 {
                    return incomplete();
                }
                if s[i + 1] == b'0' || s[i + 1] == b'-' {
                    i += 1;
                    if i == len - 1 {
                        return incomplete();
                    }
                }
                while s[i + 1].is_ascii_digit() {
                    i += 1;
                    if i == len - 1 {
                        return incomplete();
                    }
                }
                if s[i + 1] == b'.' {
                    i += 1;
                    if i == len - 1 {
                        return incomplete();
                    }
                    while s[i + 1].is_ascii_digit() {
                        i += 1;
                        if i == len - 1 {
                            return incomplete();
                        }
                    }
                }
                let c = s[i + 1];
                if !b"%ACDEFIlmPpqRSrtjJUxX".contains(&c) {
                    return Err(format!(
                        "Error: Invalid format specifier '{}'.",
                        char::from(c)
                    ));
                }
                i += 1;
            }
            b'@' => {
                if i == len - 1 {
                    return incomplete();
                }
                i += 1;
            }
            b'\\' => {
                if i == len - 1 {
                    return Err("Error: Incomplete escape specifier.".into());
                }
                let c = s[i + 1];
                if !b"\\0aenrtv".contains(&c) {
                    return Err(format!(
                        "Error: Invalid escape specifier '{}'.",
                        char::from(c)
                    ));
                }
                i += 1;
            }
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// The wall clock at one instant, read once per message as mosquitto does.
pub struct Clock {
    secs: libc::time_t,
    nanos: i64,
}

impl Clock {
    pub fn now() -> Clock {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Clock {
            secs: since.as_secs() as libc::time_t,
            nanos: i64::from(since.subsec_nanos()),
        }
    }

    /// strftime(3) of the local time.
    pub fn strftime(&self, format: &str) -> String {
        let Ok(format) = CString::new(format) else {
            return String::new();
        };
        let mut buf = [0u8; 128];
        // SAFETY: localtime_r and strftime write only into the buffers given, whose sizes
        // are passed; `tm` is zero-initialised plain data.
        let written = unsafe {
            let mut tm: libc::tm = std::mem::zeroed();
            if libc::localtime_r(&self.secs, &mut tm).is_null() {
                return String::new();
            }
            libc::strftime(buf.as_mut_ptr().cast(), buf.len(), format.as_ptr(), &tm)
        };
        String::from_utf8_lossy(&buf[..written]).into_owned()
    }
}

struct Spec {
    left: bool,
    zero: bool,
    width: usize,
    precision: Option<usize>,
}

fn pad(out: &mut Vec<u8>, fill: u8, n: usize) {
    out.extend(std::iter::repeat_n(fill, n));
}

fn print_int(out: &mut Vec<u8>, value: i64, spec: &Spec) {
    let text = value.to_string();
    let fill = spec.width.saturating_sub(text.len());
    if spec.left {
        out.extend_from_slice(text.as_bytes());
        pad(out, b' ', fill);
    } else if spec.zero {
        // printf's %0*d puts the sign before the zeros.
        if let Some(digits) = text.strip_prefix('-') {
            out.push(b'-');
            pad(out, b'0', fill);
            out.extend_from_slice(digits.as_bytes());
        } else {
            pad(out, b'0', fill);
            out.extend_from_slice(text.as_bytes());
        }
    } else {
        pad(out, b' ', fill);
        out.extend_from_slice(text.as_bytes());
    }
}

fn print_str(out: &mut Vec<u8>, value: &[u8], spec: &Spec) {
    let value = match spec.precision {
        Some(p) => &value[..value.len().min(p)],
        None => value,
    };
    let fill = spec.width.saturating_sub(value.len());
    if !spec.left {
        pad(out, b' ', fill);
    }
    out.extend_from_slice(value);
    if spec.left {
        pad(out, b' ', fill);
    }
}

fn print_blank(out: &mut Vec<u8>, fill: u8, spec: &Spec) {
    pad(out, fill, spec.width);
}

/// mosquitto's write_payload: `hex` 0 raw, 1 lower-case hex, 2 upper-case hex.
fn print_payload(out: &mut Vec<u8>, payload: &[u8], hex: u8, spec: &Spec) {
    let fill_char = if spec.zero { b'0' } else { b' ' };
    let mut len = payload.len();
    let padlen: isize;
    if spec.width > 0 {
        len = len.min(spec.width);
        if hex > 0 {
            len /= 2;
            padlen = spec.width as isize - (len * 2) as isize;
        } else {
            padlen = spec.width as isize - len as isize;
        }
    } else {
        padlen = -(len as isize);
    }
    let padlen = usize::try_from(padlen).unwrap_or(0);
    if !spec.left {
        pad(out, fill_char, padlen);
    }
    match hex {
        0 => out.extend_from_slice(&payload[..len]),
        1 => {
            for b in &payload[..len] {
                out.extend_from_slice(format!("{b:02x}").as_bytes());
            }
        }
        _ => {
            for b in &payload[..len] {
                out.extend_from_slice(format!("{b:02X}").as_bytes());
            }
        }
    }
    if spec.left {
        pad(out, b' ', padlen);
    }
}

/// One message through the format. Errors (an invalid JSON payload for `%J`) are mosquitto's
/// messages for stderr; the rest of the line is still printed, as mosquitto does.
pub fn render(
    format: &str,
    message: &Fields,
    clock: &Clock,
    pretty: bool,
    eol: bool,
) -> (Vec<u8>, Vec<String>) {
    let s = format.as_bytes();
    let len = s.len();
    let mut out = Vec::new();
    let mut errors = Vec::new();
    let mut i = 0;
    while i < len {
        match s[i] {
            b'%' => {
                let mut spec = Spec {
                    left: false,
                    zero: false,
                    width: 0,
                    precision: None,
                };
                if i < len - 1 {
                    i += 1;
                    if s[i] == b'-' {
                        spec.left = true;
                        if i < len - 1 {
                            i += 1;
                        }
                    }
                    if s[i] == b'0' {
                        spec.zero = true;
                        if i < len - 1 {
                            i += 1;
                        }
                    }
                    while i < len - 1 && s[i].is_ascii_digit() {
                        spec.width = spec.width * 10 + usize::from(s[i] - b'0');
                        i += 1;
                    }
                    if s[i] == b'.' && i < len - 1 {
                        i += 1;
                        let mut p = 0;
                        while i < len - 1 && s[i].is_ascii_digit() {
                            p = p * 10 + usize::from(s[i] - b'0');
                            i += 1;
                        }
                        spec.precision = Some(p);
                    }
                    if i < len {
                        percent(&mut out, &mut errors, s[i], &spec, message, clock, pretty);
                    }
                }
            }
            b'@' => {
                if i < len - 1 {
                    i += 1;
                    match s[i] {
                        b'@' => out.push(b'@'),
                        b'N' => out.extend_from_slice(format!("{:09}", clock.nanos).as_bytes()),
                        c => {
                            let spec = format!("%{}", char::from(c));
                            out.extend_from_slice(clock.strftime(&spec).as_bytes());
                        }
                    }
                }
            }
            b'\\' => {
                if i < len - 1 {
                    i += 1;
                    let byte = match s[i] {
                        b'\\' => Some(b'\\'),
                        b'0' => Some(0),
                        b'a' => Some(7),
                        b'e' => Some(0x1b),
                        b'n' => Some(b'\n'),
                        b'r' => Some(b'\r'),
                        b't' => Some(b'\t'),
                        b'v' => Some(0x0b),
                        _ => None,
                    };
                    out.extend(byte);
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    if eol {
        out.push(b'\n');
    }
    (out, errors)
}

fn percent(
    out: &mut Vec<u8>,
    errors: &mut Vec<String>,
    c: u8,
    spec: &Spec,
    m: &Fields,
    clock: &Clock,
    pretty: bool,
) {
    let fill = if spec.zero { b'0' } else { b' ' };
    let props = m.properties;
    match c {
        b'%' => out.push(b'%'),
        b'A' => match props.and_then(|p| p.topic_alias) {
            Some(alias) => print_int(out, i64::from(alias.get()), spec),
            None => print_blank(out, fill, spec),
        },
        b'C' => match props.and_then(|p| p.content_type.as_ref()) {
            Some(v) => print_str(out, v.as_str().as_bytes(), spec),
            None => print_blank(out, b' ', spec),
        },
        b'D' => {
            if let Some(v) = props.and_then(|p| p.correlation_data.as_ref()) {
                out.extend_from_slice(v);
            }
        }
        b'E' => match props.and_then(|p| p.message_expiry_interval_secs) {
            Some(v) => print_int(out, i64::from(v as i32), spec),
            None => print_blank(out, fill, spec),
        },
        b'F' => match props.and_then(|p| p.payload_format_utf8) {
            Some(v) => print_int(out, i64::from(v), spec),
            None => print_blank(out, fill, spec),
        },
        b'I' => print_str(out, clock.strftime("%FT%T%z").as_bytes(), spec),
        b'j' | b'J' => {
            let escaped = c == b'j';
            match json(m, clock, escaped) {
                Some(value) => value.print(out, pretty, 0),
                None => errors.push(format!(
                    "Error: Message payload is not valid JSON on topic {}.",
                    m.topic
                )),
            }
        }
        b'l' => print_int(out, m.payload.len() as i64, spec),
        b'm' => print_int(out, i64::from(m.mid), spec),
        b'P' => {
            if let Some(p) = props {
                for (i, (k, v)) in p.user_properties.iter().enumerate() {
                    if i > 0 {
                        out.push(b' ');
                    }
                    out.extend_from_slice(format!("{}:{}", k.as_str(), v.as_str()).as_bytes());
                }
            }
        }
        b'p' => print_payload(out, m.payload, 0, spec),
        b'q' => out.push(b'0' + m.qos),
        b'R' => {
            if let Some(v) = props.and_then(|p| p.response_topic.as_ref()) {
                print_str(out, v.as_str().as_bytes(), spec);
            }
        }
        b'r' => out.push(if m.retain { b'1' } else { b'0' }),
        b'S' => match props.and_then(|p| p.subscription_identifiers.first()) {
            Some(v) => print_int(out, i64::from(v.get() as i32), spec),
            None => print_blank(out, fill, spec),
        },
        b't' => print_str(out, m.topic.as_bytes(), spec),
        b'U' => {
            out.extend_from_slice(format!("{}.{:09}", clock.strftime("%s"), clock.nanos).as_bytes())
        }
        b'x' => print_payload(out, m.payload, 1, spec),
        b'X' => print_payload(out, m.payload, 2, spec),
        _ => {}
    }
}

/// The JSON object mosquitto prints for `%j` (`escaped`) and `%J`; `None` when `%J` finds a
/// payload that is not JSON.
fn json(m: &Fields, clock: &Clock, escaped: bool) -> Option<Json> {
    let tst = {
        let mut t = clock.strftime("%Y-%m-%dT%H:%M:%S.000000Z%z");
        if t.len() >= 27 {
            t.replace_range(20..26, &format!("{:06}", clock.nanos / 1000));
        }
        t
    };
    let mut fields: Vec<(Vec<u8>, Json)> = vec![
        (b"tst".to_vec(), Json::Str(tst.into_bytes())),
        (b"topic".to_vec(), Json::Str(m.topic.as_bytes().to_vec())),
        (b"qos".to_vec(), Json::Num(f64::from(m.qos))),
        (b"retain".to_vec(), Json::Num(f64::from(u8::from(m.retain)))),
        (b"payloadlen".to_vec(), Json::Num(m.payload.len() as f64)),
    ];
    if m.qos > 0 {
        fields.push((b"mid".to_vec(), Json::Num(f64::from(m.mid))));
    }
    if let Some(p) = m.properties {
        fields.push((b"properties".to_vec(), properties_json(p)));
    }
    let payload = if m.payload.is_empty() {
        Json::Null
    } else if escaped {
        // mosquitto 2.0 hands the payload to cJSON as a C string: it ends at the first NUL,
        // and control characters are escaped.
        let end = m
            .payload
            .iter()
            .position(|b| *b == 0)
            .unwrap_or(m.payload.len());
        Json::Str(m.payload[..end].to_vec())
    } else {
        Json::parse(m.payload)?
    };
    fields.push((b"payload".to_vec(), payload));
    Some(Json::Obj(fields))
}

fn properties_json(p: &PublishProperties) -> Json {
    let mut fields: Vec<(Vec<u8>, Json)> = Vec::new();
    let mut add = |name: &str, value: Json| fields.push((name.as_bytes().to_vec(), value));
    if let Some(v) = p.payload_format_utf8 {
        add(
            "payload-format-indicator",
            Json::Num(f64::from(u8::from(v))),
        );
    }
    if let Some(v) = p.message_expiry_interval_secs {
        add("message-expiry-interval", Json::Num(f64::from(v)));
    }
    if let Some(v) = &p.content_type {
        add("content-type", Json::Str(v.as_str().as_bytes().to_vec()));
    }
    if let Some(v) = &p.response_topic {
        add("response-topic", Json::Str(v.as_str().as_bytes().to_vec()));
    }
    if let Some(v) = &p.correlation_data {
        add("correlation-data", Json::Str(v.to_vec()));
    }
    for id in &p.subscription_identifiers {
        add("subscription-identifier", Json::Num(f64::from(id.get())));
    }
    if let Some(v) = p.topic_alias {
        add("topic-alias", Json::Num(f64::from(v.get())));
    }
    if !p.user_properties.is_empty() {
        let users = p
            .user_properties
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().as_bytes().to_vec(),
                    Json::Str(v.as_str().as_bytes().to_vec()),
                )
            })
            .collect();
        add("user-properties", Json::Obj(users));
    }
    Json::Obj(fields)
}

/// A JSON value as cJSON keeps it: object members in order, duplicates kept, strings as bytes.
#[derive(Debug, Clone, PartialEq)]
enum Json {
    Null,
    Bool(bool),
    Num(f64),
    Str(Vec<u8>),
    Arr(Vec<Json>),
    Obj(Vec<(Vec<u8>, Json)>),
}

impl Json {
    /// The whole of `bytes` as one JSON value (whitespace around it allowed), as
    /// cJSON_ParseWithOpts with require_null_terminated.
    fn parse(bytes: &[u8]) -> Option<Json> {
        let mut p = Parser { s: bytes, at: 0 };
        if p.s.starts_with(b"\xef\xbb\xbf") {
            p.at = 3;
        }
        p.skip();
        let value = p.value(0)?;
        p.skip();
        (p.at == p.s.len()).then_some(value)
    }

    fn print(&self, out: &mut Vec<u8>, pretty: bool, depth: usize) {
        match self {
            Json::Null => out.extend_from_slice(b"null"),
            Json::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
            Json::Num(n) => out.extend_from_slice(cjson_number(*n).as_bytes()),
            Json::Str(s) => print_json_string(out, s),
            Json::Arr(items) => {
                out.push(b'[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                        if pretty {
                            out.push(b' ');
                        }
                    }
                    item.print(out, pretty, depth + 1);
                }
                out.push(b']');
            }
            Json::Obj(members) => {
                out.push(b'{');
                if pretty {
                    out.push(b'\n');
                }
                for (i, (k, v)) in members.iter().enumerate() {
                    if pretty {
                        pad(out, b'\t', depth + 1);
                    }
                    print_json_string(out, k);
                    out.push(b':');
                    if pretty {
                        out.push(b'\t');
                    }
                    v.print(out, pretty, depth + 1);
                    if i + 1 < members.len() {
                        out.push(b',');
                    }
                    if pretty {
                        out.push(b'\n');
                    }
                }
                if pretty {
                    pad(out, b'\t', depth);
                }
                out.push(b'}');
            }
        }
    }
}

/// cJSON's number printing: whole numbers in int range as `%d`, others as `%1.15g` unless that
/// does not read back to the same double, then `%1.17g`; NaN and infinities as `null`.
fn cjson_number(n: f64) -> String {
    if !n.is_finite() {
        return "null".into();
    }
    let as_int = if n >= f64::from(i32::MAX) {
        i32::MAX
    } else if n <= f64::from(i32::MIN) {
        i32::MIN
    } else {
        n as i32
    };
    if n == f64::from(as_int) {
        return as_int.to_string();
    }
    let g15 = printf_g(n, 15);
    if g15.parse::<f64>().ok() == Some(n) {
        g15
    } else {
        printf_g(n, 17)
    }
}

/// C's `%1.<precision>g`.
fn printf_g(n: f64, precision: i32) -> String {
    let mut buf = [0u8; 64];
    let format = c"%1.*g";
    // SAFETY: snprintf writes at most buf.len() bytes (NUL included) into buf; the format
    // takes exactly an int precision and a double.
    let written = unsafe {
        libc::snprintf(
            buf.as_mut_ptr().cast(),
            buf.len(),
            format.as_ptr(),
            precision,
            n,
        )
    };
    let written = usize::try_from(written).unwrap_or(0).min(buf.len() - 1);
    String::from_utf8_lossy(&buf[..written]).into_owned()
}

fn print_json_string(out: &mut Vec<u8>, s: &[u8]) {
    out.push(b'"');
    for &b in s {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            c if c < 0x20 => out.extend_from_slice(format!("\\u{c:04x}").as_bytes()),
            c => out.push(c),
        }
    }
    out.push(b'"');
}

/// A bound on nesting, as cJSON's CJSON_NESTING_LIMIT.
const NESTING_LIMIT: usize = 1000;

struct Parser<'a> {
    s: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn skip(&mut self) {
        while self.at < self.s.len() && self.s[self.at] <= 32 {
            self.at += 1;
        }
    }

    fn eat(&mut self, word: &[u8]) -> bool {
        if self.s[self.at..].starts_with(word) {
            self.at += word.len();
            true
        } else {
            false
        }
    }

    fn value(&mut self, depth: usize) -> Option<Json> {
        if depth > NESTING_LIMIT {
            return None;
        }
        let c = *self.s.get(self.at)?;
        match c {
            b'n' => self.eat(b"null").then_some(Json::Null),
            b't' => self.eat(b"true").then_some(Json::Bool(true)),
            b'f' => self.eat(b"false").then_some(Json::Bool(false)),
            b'"' => self.string().map(Json::Str),
            b'[' => {
                self.at += 1;
                let mut items = Vec::new();
                self.skip();
                if self.eat(b"]") {
                    return Some(Json::Arr(items));
                }
                loop {
                    self.skip();
                    items.push(self.value(depth + 1)?);
                    self.skip();
                    if self.eat(b",") {
                        continue;
                    }
                    return self.eat(b"]").then_some(Json::Arr(items));
                }
            }
            b'{' => {
                self.at += 1;
                let mut members = Vec::new();
                self.skip();
                if self.eat(b"}") {
                    return Some(Json::Obj(members));
                }
                loop {
                    self.skip();
                    if self.s.get(self.at) != Some(&b'"') {
                        return None;
                    }
                    let key = self.string()?;
                    self.skip();
                    if !self.eat(b":") {
                        return None;
                    }
                    self.skip();
                    let value = self.value(depth + 1)?;
                    members.push((key, value));
                    self.skip();
                    if self.eat(b",") {
                        continue;
                    }
                    return self.eat(b"}").then_some(Json::Obj(members));
                }
            }
            b'-' | b'0'..=b'9' => {
                let start = self.at;
                while self.at < self.s.len()
                    && matches!(
                        self.s[self.at],
                        b'0'..=b'9' | b'+' | b'-' | b'e' | b'E' | b'.'
                    )
                {
                    self.at += 1;
                }
                let text = std::str::from_utf8(&self.s[start..self.at]).ok()?;
                text.parse::<f64>().ok().map(Json::Num)
            }
            _ => None,
        }
    }

    /// A string at `"`, its escapes decoded (`\u` to UTF-8).
    fn string(&mut self) -> Option<Vec<u8>> {
        self.at += 1;
        let mut out = Vec::new();
        loop {
            let c = *self.s.get(self.at)?;
            self.at += 1;
            match c {
                b'"' => return Some(out),
                b'\\' => {
                    let e = *self.s.get(self.at)?;
                    self.at += 1;
                    match e {
                        b'b' => out.push(8),
                        b'f' => out.push(12),
                        b'n' => out.push(b'\n'),
                        b'r' => out.push(b'\r'),
                        b't' => out.push(b'\t'),
                        b'"' | b'\\' | b'/' => out.push(e),
                        b'u' => {
                            let mut code = self.hex4()?;
                            if (0xD800..0xDC00).contains(&code) {
                                if !self.eat(b"\\u") {
                                    return None;
                                }
                                let low = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&low) {
                                    return None;
                                }
                                code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
                            }
                            let ch = char::from_u32(code)?;
                            let mut buf = [0u8; 4];
                            out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                        }
                        _ => return None,
                    }
                }
                c => out.push(c),
            }
        }
    }

    fn hex4(&mut self) -> Option<u32> {
        let digits = self.s.get(self.at..self.at + 4)?;
        self.at += 4;
        u32::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields<'a>(topic: &'a str, payload: &'a [u8]) -> Fields<'a> {
        Fields {
            topic,
            payload,
            qos: 1,
            retain: true,
            mid: 7,
            properties: None,
        }
    }

    fn line(format: &str, m: &Fields) -> String {
        let (out, errors) = render(format, m, &Clock::now(), false, false);
        assert!(errors.is_empty(), "{errors:?}");
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn checks_like_mosquitto() {
        assert!(check("%t %p %-10x %05l %.3p @H \\n").is_ok());
        assert_eq!(
            check("%z").unwrap_err(),
            "Error: Invalid format specifier 'z'."
        );
        assert_eq!(
            check("abc %").unwrap_err(),
            "Error: Incomplete format specifier."
        );
        assert_eq!(
            check("\\q").unwrap_err(),
            "Error: Invalid escape specifier 'q'."
        );
        assert_eq!(
            check("x\\").unwrap_err(),
            "Error: Incomplete escape specifier."
        );
    }

    #[test]
    fn fields_widths_and_escapes() {
        let m = fields("a/b", b"hello");
        assert_eq!(line("%t|%p|%q|%r|%m|%l", &m), "a/b|hello|1|1|7|5");
        assert_eq!(
            line("[%8t][%-8t][%.1t][%05l]", &m),
            "[     a/b][a/b     ][a][00005]"
        );
        assert_eq!(line("%x %X", &fields("t", b"\x01\xab")), "01ab 01AB");
        assert_eq!(line("a\\tb\\\\%%", &m), "a\tb\\%");
    }

    #[test]
    fn json_is_cjsons() {
        let clock = Clock::now();
        let m = fields("a/\"b", b"x\"y");
        let (out, _) = render("%j", &m, &clock, false, false);
        let text = String::from_utf8(out).unwrap();
        let tail = text.split_once("\",\"topic\"").unwrap().1;
        assert_eq!(
            tail,
            ":\"a/\\\"b\",\"qos\":1,\"retain\":1,\"payloadlen\":3,\"mid\":7,\"payload\":\"x\\\"y\"}"
        );
        let m = fields(
            "t",
            b" {\"n\": [1, 2.5, -3e2, true, null], \"s\": \"\\u00e9\"} ",
        );
        let (out, errors) = render("%J", &m, &clock, true, false);
        assert!(errors.is_empty());
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.ends_with(
                "\t\"payload\":\t{\n\t\t\"n\":\t[1, 2.5, -300, true, null],\n\t\t\"s\":\t\"\u{e9}\"\n\t}\n}"
            ),
            "{text}"
        );
        let (out, _) = render("%j", &fields("t", b"a\tb\x01\0c"), &clock, false, false);
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with(",\"payload\":\"a\\tb\\u0001\"}"), "{text}");
        let (_, errors) = render("%J", &fields("t", b"{nope"), &clock, false, false);
        assert_eq!(
            errors,
            ["Error: Message payload is not valid JSON on topic t."]
        );
        assert_eq!(cjson_number(0.1), "0.1");
        assert_eq!(cjson_number(1e20), "1e+20");
        assert_eq!(cjson_number(5_000_000_000.0), "5000000000");
    }
}
